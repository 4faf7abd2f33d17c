"""The SNN core: the IF neuron, simulation over T steps, threshold rules, graph surgery,
conversion, calibration stages, MAC/synop counting and the saved-SNN format.

Reading order: :mod:`ftbc.snn.neuron` -> :mod:`ftbc.snn.simulation` -> :mod:`ftbc.snn.graph`
-> :mod:`ftbc.snn.conversion` -> :mod:`ftbc.snn.calibration` (FTBC).
Imports the base modules, :mod:`ftbc.data` and :mod:`ftbc.models`, nothing above.
"""
