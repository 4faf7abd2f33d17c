"""ResNets of the conversion lineages: basic blocks, average pooling, an injected activation.

The same name means different networks in different papers (docs/methods.md section 7):

- ``resnet20_qcfs``: the standard CIFAR ResNet-20 (He et al., CVPR 2016) used by
  QCFS (Bu et al., ICLR 2022): conv3x3 stem (16), [3, 3, 3] blocks of
  16-32-64 channels, about 0.27 M parameters.
- ``resnet20_rts``: the "ResNet-20" of the RTS release (Deng & Gu, ICLR 2021;
  QCFS calls this family "altered ResNet-18"): a stem of three conv3x3 (64) +
  activation, AvgPool(2), [2, 2, 2, 2] blocks of 64-128-256-512 channels, no
  BatchNorm and no conv biases, Dropout(0.2) after every activation that feeds
  a conv of the same stem or block (after the first two stem activations and
  after each block's first activation), and no averaging before the head:
  ``global_pool`` (AdaptiveAvgPool2d(2)) is the identity on the final
  512 x 2 x 2 map of a 32 x 32 image, which is flattened into
  Linear(2048, classes, bias=False). 11,253,440 parameters for 10 classes.
  (The release's training and simulation scripts hand the model a boolean
  where the dropout probability goes; the suite keeps the model's own
  default, 0.2, as docs/methods.md section 7 states.)
- ``resnet20_snnc_icml``: the ResNet-20 of the ICML 2021 SNN Calibration
  release (``ResNet_Cifar_Modified``): a stem of three conv3x3 (64) whose third
  conv has stride 2 (no stem pooling), the same stages, BN after every conv
  (bias-free convs), no Dropout, and global average pooling followed by an
  activation (the release averages with a fixed depthwise conv + ReLU, a
  spiking layer after conversion) into a biased Linear(512, classes).
- ``resnet20_snnc``: the later SNN Calibration ResNet-20: one-conv stem (64),
  [3, 3, 3] blocks of 64-128-256.
- ``resnet18_cifar``: CIFAR-style ResNet-18, conv3x3 stride-1 stem (64),
  [2, 2, 2, 2] blocks of 64-512.
- ``resnet34_snnc``: ImageNet ResNet-34 of SNN Calibration / FTBC "Ours*":
  deep stem (three conv3x3 32-32-64, the first with stride 2), the max pool
  replaced by AvgPool2d(3, 2, 1), [3, 4, 6, 3] blocks.
- ``resnet34_qcfs``: ImageNet ResNet-34 of QCFS: conv3x3 stride-1 stem (64),
  no stem pooling, so the first stage runs at full input resolution.

Every block adds its shortcut (identity, or 1x1 conv [+ BN] when the shape
changes) to ``bn2(conv2(.))`` before its second activation, the place where
the SNN's neuron integrates both currents. Dropout layers are ``nn.Dropout``
modules, the identity in eval mode, so tracing and conversion see them as
pass-through layers. Written for this suite (MIT).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from timm.models import generate_default_cfgs
from torch import Tensor, nn

from ._factory import build_model, cifar_cfg, imagenet_cfg, register_model
from ._layers import init_weights
from .activations import get_act_layer
from .papers import PAPERS

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """``act2(bn2(conv2(drop(act1(bn1(conv1(x)))))) + shortcut(x))`` (``drop`` only with a drop rate).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of ``conv1`` and of the projection shortcut.
        norm: BatchNorm after each conv (else ``bn1``/``bn2`` are identities).
        conv_bias: whether the convs (shortcut projection included) carry a
            bias; None means "when there is no BN".
        drop_rate: Dropout probability between ``act1`` and ``conv2``
            (0: no Dropout module, ``drop`` is None).
        act_layer: zero-argument activation factory (two instances per block).

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, norm: bool = True,
                 conv_bias: Optional[bool] = None, drop_rate: float = 0.0,
                 act_layer: Callable[[], nn.Module]) -> None:
        super().__init__()
        bias = (not norm) if conv_bias is None else conv_bias
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(out_ch) if norm else nn.Identity()
        self.act1 = act_layer()
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_ch) if norm else nn.Identity()
        if stride != 1 or in_ch != out_ch:
            proj: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias)]
            if norm:
                proj.append(nn.BatchNorm2d(out_ch))
            self.shortcut = nn.Sequential(*proj)
        else:
            self.shortcut = nn.Identity()
        self.act2 = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    """Stem -> stages of basic blocks -> average pool -> flatten -> ``fc``.

    Args:
        layers: blocks per stage; stage 1 keeps the resolution, later stages
            halve it in their first block.
        channels: output channels per stage.
        stem: ``(out_channels, stride)`` of each conv3x3 (+ BN) + activation of the stem.
        stem_pool: ``(kernel, stride, padding)`` of an AvgPool2d closing the
            stem, or None.
        norm: use BatchNorm (all lineages but RTS do).
        conv_bias: whether the convs carry a bias; None means "when there is no BN".
        drop_rate: Dropout after every activation that feeds a conv of the
            same stem or block: after each stem activation but the last, and
            between each block's ``act1`` and ``conv2`` (RTS: 0.2; 0: none).
        pool_size: spatial size fed to the head by ``global_pool``
            (AdaptiveAvgPool2d): 1 is global average pooling; a size equal to
            the final map at the design resolution (RTS: 2 at 32 x 32) makes
            it the identity there, so the head sees the flattened map.
        pool_act: an activation after ``global_pool`` (the ICML-era SNN Calibration
            release averages with a depthwise conv followed by ReLU, so its SNN
            has a spiking layer there; in the ANN it is the identity on
            non-negative inputs).
        fc_bias: whether ``fc`` carries a bias.
        num_classes: outputs of ``fc``.
        in_chans: input channels.
        act_layer: activation name or zero-argument factory.

    Shape:
        ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        channels: Sequence[int],
        *,
        stem: Sequence[tuple[int, int]] = ((64, 1),),
        stem_pool: Optional[tuple[int, int, int]] = None,
        norm: bool = True,
        conv_bias: Optional[bool] = None,
        drop_rate: float = 0.0,
        pool_size: int = 1,
        pool_act: bool = False,
        fc_bias: bool = True,
        num_classes: int = 10,
        in_chans: int = 3,
        act_layer: Union[str, Callable[[], nn.Module]] = "relu",
    ) -> None:
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError(f"layers {tuple(layers)} and channels {tuple(channels)} differ in length")
        act_layer = get_act_layer(act_layer)
        bias = (not norm) if conv_bias is None else conv_bias
        stem_layers: list[nn.Module] = []
        ch = in_chans
        for i, (out, stride) in enumerate(stem):
            stem_layers.append(nn.Conv2d(ch, out, 3, stride=stride, padding=1, bias=bias))
            if norm:
                stem_layers.append(nn.BatchNorm2d(out))
            stem_layers.append(act_layer())
            if drop_rate > 0 and i < len(stem) - 1:
                stem_layers.append(nn.Dropout(drop_rate))
            ch = out
        if stem_pool is not None:
            stem_layers.append(nn.AvgPool2d(*stem_pool))
        self.stem = nn.Sequential(*stem_layers)
        stages = []
        for i, (n_blocks, out) in enumerate(zip(layers, channels)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(ch, out, stride, norm=norm, conv_bias=bias, drop_rate=drop_rate,
                                         act_layer=act_layer))
                ch = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(pool_size)
        self.pool_act = act_layer() if pool_act else nn.Identity()
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(ch * pool_size * pool_size, num_classes, bias=fc_bias)
        self.num_classes = num_classes
        init_weights(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool_act(self.global_pool(self.forward_features(x)))))


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    return build_model(ResNet, variant, pretrained, **kwargs)


_SNNC, _QCFS, _RTS = (PAPERS[key].title for key in ("snnc", "qcfs", "rts"))

default_cfgs = generate_default_cfgs({
    "resnet20_qcfs": cifar_cfg(first_conv="stem.0", paper_name=_QCFS),
    "resnet20_rts": cifar_cfg(first_conv="stem.0", paper_name=_RTS),
    "resnet20_snnc": cifar_cfg(first_conv="stem.0", paper_name=_SNNC),
    "resnet20_snnc_icml": cifar_cfg(first_conv="stem.0", paper_name=_SNNC),
    "resnet18_cifar": cifar_cfg(first_conv="stem.0"),
    "resnet34_snnc": imagenet_cfg(first_conv="stem.0", paper_name=_SNNC),
    "resnet34_qcfs": imagenet_cfg(first_conv="stem.0", paper_name=_QCFS),
})


@register_model
def resnet20_qcfs(pretrained: bool = False, **kwargs) -> ResNet:
    """Standard CIFAR ResNet-20: stem 16, [3, 3, 3] x 16-32-64."""
    model_args = dict(layers=(3, 3, 3), channels=(16, 32, 64), stem=((16, 1),))
    return _create_resnet("resnet20_qcfs", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet20_rts(pretrained: bool = False, **kwargs) -> ResNet:
    """RTS release ResNet-20: 3-conv stem 64, AvgPool(2), [2, 2, 2, 2] x 64-512, no BN, no conv biases,
    Dropout(0.2), the 512 x 2 x 2 map flattened into Linear(2048, classes, bias=False)."""
    model_args = dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512),
                      stem=((64, 1), (64, 1), (64, 1)), stem_pool=(2, 2, 0),
                      norm=False, conv_bias=False, drop_rate=0.2, pool_size=2, fc_bias=False)
    return _create_resnet("resnet20_rts", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet20_snnc_icml(pretrained: bool = False, **kwargs) -> ResNet:
    """ICML-2021 SNNC ResNet-20: 3-conv stem 64 + BN (the third with stride 2), [2, 2, 2, 2] x 64-512,
    global pool + activation, Linear(512)."""
    model_args = dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512),
                      stem=((64, 1), (64, 1), (64, 2)), pool_act=True)
    return _create_resnet("resnet20_snnc_icml", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet20_snnc(pretrained: bool = False, **kwargs) -> ResNet:
    """Later SNNC ResNet-20: stem 64, [3, 3, 3] x 64-128-256."""
    model_args = dict(layers=(3, 3, 3), channels=(64, 128, 256), stem=((64, 1),))
    return _create_resnet("resnet20_snnc", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-18: stem 64 (stride 1), [2, 2, 2, 2] x 64-512."""
    model_args = dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), stem=((64, 1),))
    return _create_resnet("resnet18_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_snnc(pretrained: bool = False, **kwargs) -> ResNet:
    """SNNC ImageNet ResNet-34: deep stem 32-32-64 (stride 2), AvgPool(3, 2, 1), [3, 4, 6, 3]."""
    model_args = dict(layers=(3, 4, 6, 3), channels=(64, 128, 256, 512),
                      stem=((32, 2), (32, 1), (64, 1)), stem_pool=(3, 2, 1))
    return _create_resnet("resnet34_snnc", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_qcfs(pretrained: bool = False, **kwargs) -> ResNet:
    """QCFS ImageNet ResNet-34: stem 64 (stride 1, no pooling), [3, 4, 6, 3]."""
    model_args = dict(layers=(3, 4, 6, 3), channels=(64, 128, 256, 512), stem=((64, 1),))
    return _create_resnet("resnet34_qcfs", pretrained, **dict(model_args, **kwargs))
