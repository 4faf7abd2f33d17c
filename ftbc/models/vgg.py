"""VGG networks of the conversion lineages, with average pooling and an injected activation.

Each lineage means something different by "VGG-16" (docs/methods.md section 7):

- ``vgg16_snnc``: CIFAR VGG-16 of SNN Calibration (Li et al., "A Free Lunch
  From ANN", ICML 2021): configuration "D", 13 conv3x3 + BN + activation,
  AvgPool after each of the 5 blocks, one Linear(512, classes).
- ``vgg16_qcfs``: the same features with QCFS's classifier (Bu et al.,
  "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency SNNs",
  ICLR 2022): 512 -> 4096 -> 4096 -> classes, activation + Dropout between.
- ``vgg16_rts``: CIFAR VGG-16 of RTS (Deng & Gu, "Optimal Conversion of
  Conventional ANNs to SNNs", ICLR 2021): configuration "C" (the third conv
  of blocks 3-5 is 1x1), no BN (convs carry a bias), 4 AvgPools (none after
  block 5), FC 2048 -> 4096 -> 4096 -> classes.
- ``vgg16_imagenet`` / ``vgg16_rts_imagenet``: ImageNet VGG-16 "D" with BN
  (SNNC, QCFS) or without (RTS), AvgPool, FC 25088 -> 4096 -> 4096 -> classes.
- ``vgg_small``: the suite's own 6-conv CIFAR net for CPU runs (not from a paper).

Max pooling never appears: the SNN needs pooling that is linear in its input.
Written for this suite (MIT); the layer lists follow Simonyan & Zisserman,
"Very Deep Convolutional Networks", ICLR 2015, configurations C and D.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ._factory import build_model, cifar_cfg, imagenet_cfg, register_model
from ._layers import conv_norm_act, init_weights
from .activations import get_act_layer
from .papers import PAPERS

__all__ = ["VGG"]

# Feature layer lists: an int is a conv3x3 with that many output channels,
# (channels, k) a conv kxk, 'A' an AvgPool2d(2).
FEATURE_CFGS: dict[str, tuple] = {
    "small": (32, 32, "A", 64, 64, "A", 128, 128, "A"),
    "C": (64, 64, "A", 128, 128, "A", 256, 256, (256, 1), "A",
          512, 512, (512, 1), "A", 512, 512, (512, 1)),
    "D": (64, 64, "A", 128, 128, "A", 256, 256, 256, "A",
          512, 512, 512, "A", 512, 512, 512, "A"),
}


class VGG(nn.Module):
    """Plain conv stack -> adaptive average pool -> flatten -> FC head -> ``fc``.

    ``features`` holds conv (+ BN) + activation triples and AvgPool2d(2)
    layers; ``global_pool`` (AdaptiveAvgPool2d(pool_size)) is the identity at
    the design resolution and lets smaller or larger inputs through;
    ``pre_logits`` holds the hidden Linear + activation + Dropout layers;
    ``fc`` is the non-spiking classifier.

    Args:
        features: a layer list (see ``FEATURE_CFGS``) or the name of one.
        pool_size: spatial size fed to the head (1 -> Linear(C), 7 -> Linear(49 C)).
        hidden: widths of the hidden FC layers.
        norm: BatchNorm after each conv (then the conv has no bias).
        num_classes: outputs of ``fc``.
        in_chans: input channels.
        drop_rate: Dropout probability after each hidden FC activation.
        act_layer: activation name or zero-argument factory.

    Shape:
        ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        features: Union[str, Sequence],
        *,
        pool_size: int = 1,
        hidden: Sequence[int] = (),
        norm: bool = True,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        act_layer: Union[str, Callable[[], nn.Module]] = "relu",
    ) -> None:
        super().__init__()
        act_layer = get_act_layer(act_layer)
        cfg = FEATURE_CFGS[features] if isinstance(features, str) else tuple(features)
        layers: list[nn.Module] = []
        ch = in_chans
        for item in cfg:
            if item == "A":
                layers.append(nn.AvgPool2d(2))
                continue
            out, k = item if isinstance(item, tuple) else (item, 3)
            layers += conv_norm_act(ch, out, k, norm=norm, act_layer=act_layer)
            ch = out
        self.features = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(pool_size)
        self.flatten = nn.Flatten(1)
        head: list[nn.Module] = []
        width = ch * pool_size * pool_size
        for h in hidden:
            head += [nn.Linear(width, h), act_layer(), nn.Dropout(drop_rate)]
            width = h
        self.pre_logits = nn.Sequential(*head)
        self.fc = nn.Linear(width, num_classes)
        self.num_classes = num_classes
        init_weights(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(self.global_pool(self.features(x)))
        return self.fc(self.pre_logits(x))


def _create_vgg(variant: str, pretrained: bool = False, **kwargs) -> VGG:
    return build_model(VGG, variant, pretrained, **kwargs)


_SNNC, _QCFS, _RTS = (PAPERS[key].title for key in ("snnc", "qcfs", "rts"))

default_cfgs = generate_default_cfgs({
    "vgg_small": cifar_cfg(first_conv="features.0", description="6-conv CIFAR net for CPU runs"),
    "vgg16_snnc": cifar_cfg(first_conv="features.0", paper_name=_SNNC),
    "vgg16_qcfs": cifar_cfg(first_conv="features.0", paper_name=_QCFS),
    "vgg16_rts": cifar_cfg(first_conv="features.0", paper_name=_RTS),
    "vgg16_imagenet": imagenet_cfg(first_conv="features.0", paper_name=_SNNC),
    "vgg16_rts_imagenet": imagenet_cfg(first_conv="features.0", paper_name=_RTS),
})


@register_model
def vgg_small(pretrained: bool = False, **kwargs) -> VGG:
    """6-conv CIFAR net (32-32-64-64-128-128, BN, 3 AvgPools, global pool, Linear(128))."""
    model_args = dict(features="small", pool_size=1)
    return _create_vgg("vgg_small", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_snnc(pretrained: bool = False, **kwargs) -> VGG:
    """SNNC CIFAR VGG-16: "D" with BN, 5 AvgPools, Linear(512, classes)."""
    model_args = dict(features="D", pool_size=1)
    return _create_vgg("vgg16_snnc", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_qcfs(pretrained: bool = False, **kwargs) -> VGG:
    """QCFS CIFAR VGG-16: "D" with BN, 5 AvgPools, FC 512-4096-4096-classes."""
    model_args = dict(features="D", pool_size=1, hidden=(4096, 4096))
    return _create_vgg("vgg16_qcfs", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_rts(pretrained: bool = False, **kwargs) -> VGG:
    """RTS CIFAR VGG-16: "C" without BN, 4 AvgPools, FC 2048-4096-4096-classes."""
    model_args = dict(features="C", pool_size=2, hidden=(4096, 4096), norm=False)
    return _create_vgg("vgg16_rts", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_imagenet(pretrained: bool = False, **kwargs) -> VGG:
    """ImageNet VGG-16 "D" with BN, 5 AvgPools, FC 25088-4096-4096-classes."""
    model_args = dict(features="D", pool_size=7, hidden=(4096, 4096))
    return _create_vgg("vgg16_imagenet", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_rts_imagenet(pretrained: bool = False, **kwargs) -> VGG:
    """RTS ImageNet VGG-16 "D" without BN, 5 AvgPools, FC 25088-4096-4096-classes."""
    model_args = dict(features="D", pool_size=7, hidden=(4096, 4096), norm=False)
    return _create_vgg("vgg16_rts_imagenet", pretrained, **dict(model_args, **kwargs))
