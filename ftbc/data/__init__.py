"""Data layer: datasets and transforms, the calibration pool, in-memory batches, loaders,
dataset preparation and sharding. Imports only the base modules (``ftbc.errors``, ``ftbc._io``)."""
