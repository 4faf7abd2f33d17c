"""FTBC: a reproducibility suite for ANN-to-SNN conversion.

Reading order: :mod:`ftbc.neuron` (the IF neuron) -> :mod:`ftbc.simulation`
(running T steps) -> :mod:`ftbc.conversion` (ANN -> SNN) ->
:mod:`ftbc.calibration` (FTBC) -> :mod:`ftbc.evaluation`.
"""

__version__ = "0.1.0"
