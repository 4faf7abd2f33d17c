"""Drivers: ``ftbc evaluate``, ``ftbc quickstart``, the CPU reproduction and the grid
expansion used by the Snakemake workflow. The top of the import order (below only ``ftbc.cli``)."""
