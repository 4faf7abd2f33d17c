"""RTS: ReLU with threshold and shift (Deng & Gu, ICLR 2021; docs/methods.md section 4).

The ANN is trained with a clipped ReLU (``ClipReLU``, one y_th for all layers,
no BN). Conversion: theta = the layer's maximum activation on training data
(a running maximum, not an EMA, over every image of the calibration pool once:
the release makes one pass over its whole augmenting training loader; FTBC's
RTS path takes 12 batches of 32 instead, see ``baselines/ftbc.py``), the shift
theta / (2T) added at every step,
v(0) = 0, and — as in the release — a spiking classifier whose threshold is the
maximum logit. The shift depends on T, so each T is its own run.

Where the shift goes (``shift_after_add=False``): the release adds theta / (2T)
inside its spike layers, to the output of the one convolution or linear layer
each of them wraps (the stem convs, each residual block's first conv, the
classifier). A residual block's second neuron is not such a layer: the block
sums the second conv's current and the shortcut's into a membrane of its own
and fires it against its threshold with no shift. The suite does the same: a
neuron whose input in the traced graph is a residual addition gets offset 0,
every other neuron (the spiking classifier included) theta / (2T). In a
network without residual additions (VGG) every neuron is shifted. The FTBC
variant on RTS inherits the setting.
"""

from dataclasses import dataclass

from baselines import Method, register_method
from ftbc.models.papers import PAPERS


@dataclass(frozen=True)
class RTSConfig:
    threshold_batches: int | None = None  # the release's pass over its whole training loader
    threshold_batch_size: int = 128


CFG = RTSConfig()

RTS = register_method(Method(
    name="rts",
    label="RTS",
    family="RTS",
    activation="clip",
    threshold="max",
    threshold_reduce="max",
    threshold_batches=CFG.threshold_batches,
    threshold_batch_size=CFG.threshold_batch_size,
    v0=0.0,
    shift=True,
    shift_after_add=False,
    spiking_classifier=True,
    summary="clipped-ReLU ANN, theta = max activation, shift theta/2T (not after residual adds), spiking classifier",
    reference=PAPERS["rts"].reference,
))
