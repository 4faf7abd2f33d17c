"""Max-norm conversion: a plain max-activation conversion with no shift and no calibration.

Each layer's threshold is the EMA (momentum 0.9, 7 batches of 128 training
images) of its per-batch ReLU maximum, the "max" choice of SNN Calibration's
release; v(0) = 0, no per-step shift, no calibration stage. Nothing depends on T.

This is not SNN Calibration's "none" row: the release's no-calibration run adds
the shift theta / (2T) at every step (``snnc_none``, registered in
``baselines/snnc.py``). Set ``threshold='percentile'`` for the robust variant.
"""

from baselines import Method, register_method
from ftbc.models.papers import PAPERS
from ftbc.data.calibration_pool import SNNC_LOADER

MAXNORM = register_method(Method(
    name="maxnorm",
    label="Max-norm",
    family="max-norm",
    activation="relu",
    threshold="max",
    threshold_reduce="ema",
    v0=0.0,
    calibration_augmentation=SNNC_LOADER,  # the "max" path of SNN Calibration's release, its loader
    summary="ReLU ANN, max-activation thresholds (EMA of batch maxima), no shift, no calibration "
            "(not SNNC's 'none' row: snnc_none)",
    reference=f"Rueckauer et al. 2017; SNN Calibration's release ({PAPERS['snnc'].cite})",
))
