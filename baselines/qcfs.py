"""QCFS (Bu et al., ICLR 2022; docs/methods.md section 3).

The ANN is trained with the quantisation-clip-floor-shift activation
(``ftbc.models.activations.QCFS``: L levels, trainable lambda initialised to
8). Conversion keeps the weights, sets theta = lambda and v(0) = theta / 2, and
adds nothing else: with v(0) = theta/2 the expected conversion error is zero
for any T, so nothing depends on T and one T_max run gives every prefix.
"""

from baselines import Method, register_method
from ftbc.models.papers import PAPERS
from ftbc.data.calibration_pool import QCFS_LOADER

QCFS = register_method(Method(
    name="qcfs",
    label="QCFS",
    family="QCFS",
    activation="qcfs",
    threshold="lambda",
    v0=0.5,
    calibration_augmentation=QCFS_LOADER,  # FTBC's QCFS path: the QCFS loader (crop, flip, AutoAugment, Cutout 16)
    threshold_batches=1,  # theta comes from the weights; one batch only checks the wiring
    summary="QCFS-activation ANN, theta = lambda, v(0) = theta/2",
    reference=PAPERS["qcfs"].reference,
))
