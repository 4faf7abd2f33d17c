"""RTS: ReLU with threshold and shift (Deng & Gu, ICLR 2021; METHODS.md section 4).

The ANN is trained with a clipped ReLU (``ClipReLU``, one y_th for all layers,
no BN). Conversion: theta = the layer's maximum activation on training data
(a running maximum, not an EMA), the shift theta / (2T) added at every step,
v(0) = 0, and — as in the release — a spiking classifier whose threshold is the
maximum logit. The shift depends on T, so each T is its own run.
"""

from dataclasses import dataclass

from baselines import Method, register_method


@dataclass(frozen=True)
class RTSConfig:
    threshold_batches: int = 40  # 5,120 training images for the maxima
    threshold_batch_size: int = 128


CFG = RTSConfig()

RTS = register_method(Method(
    name="rts",
    activation="clip",
    threshold="max",
    threshold_reduce="max",
    threshold_batches=CFG.threshold_batches,
    threshold_batch_size=CFG.threshold_batch_size,
    v0=0.0,
    shift=True,
    spiking_classifier=True,
    summary="clipped-ReLU ANN, theta = max activation, shift theta/2T, spiking classifier",
    reference="Deng & Gu, Optimal Conversion of Conventional ANNs to SNNs, ICLR 2021",
))
