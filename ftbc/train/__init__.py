"""ANN training: the ``ftbc train`` driver, the optimisation loop, recipes, resumable state and
the allocator setting. Imports the base modules, :mod:`ftbc.data` and :mod:`ftbc.models`."""
