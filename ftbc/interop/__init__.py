"""Interoperability: importing the releases' checkpoints, exporting saved SNNs to
SpikingJelly modules and NIR graphs. Sits on top of the core."""
