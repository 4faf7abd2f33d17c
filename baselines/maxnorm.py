"""Max-norm conversion: thresholds from activation maxima, no calibration.

The "max" choice of SNN Calibration's release (an EMA, momentum 0.9, of the
per-batch maxima of each layer's ReLU output on training images) is the
no-calibration baseline every other method improves on (METHODS.md section 2).
Set ``threshold='percentile'`` for the robust variant. Nothing depends on T.
"""

from baselines import Method, register_method

MAXNORM = register_method(Method(
    name="maxnorm",
    activation="relu",
    threshold="max",
    threshold_reduce="ema",
    v0=0.0,
    summary="ReLU ANN, max-activation thresholds (EMA of batch maxima), no calibration",
    reference="Rueckauer et al. 2017; SNN Calibration's release (Li et al., ICML 2021)",
))
