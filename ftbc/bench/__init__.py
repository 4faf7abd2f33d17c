"""``ftbc bench``: speed and memory benchmarks of the SNN core against the releases' code
(reference implementations) and SpikingJelly. Sits on top of the core and the methods."""
