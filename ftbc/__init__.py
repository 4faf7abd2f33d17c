"""FTBC: a reproducibility suite for ANN-to-SNN conversion.

Reading order: :mod:`ftbc.snn.neuron` (the IF neuron) -> :mod:`ftbc.snn.simulation`
(running T steps) -> :mod:`ftbc.snn.conversion` (ANN -> SNN) ->
:mod:`ftbc.snn.calibration` (FTBC) -> :mod:`ftbc.run.evaluation`.
"""

__version__ = "0.1.0"
