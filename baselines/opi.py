"""OPI: optimal initial potential (Bu et al., AAAI 2022; the "OPI*" row of the FTBC tables).

A ReLU ANN converted exactly like max-norm, but every neuron starts half full,
v(0) = theta / 2, which turns the SNN's flooring staircase into rounding and
halves the expected quantisation error at no cost. Nothing depends on T.

Added as the guide ``docs/adding-a-baseline.md`` describes: this file and one
import line in ``baselines/__init__.py``.
"""

from baselines import Method, register_method
from ftbc.models.papers import PAPERS

OPI = register_method(Method(
    name="opi",
    label="OPI",
    family="OPI",
    activation="relu",
    threshold="max",
    threshold_reduce="ema",
    v0=0.5,
    summary="ReLU ANN, max thresholds, initial potential theta/2",
    reference=PAPERS["opi"].reference,
))
