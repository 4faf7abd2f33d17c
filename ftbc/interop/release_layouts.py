"""Where each release keeps a network's tensors: per release and suite architecture, the
:class:`Layout` that :mod:`ftbc.interop.checkpoint_import` maps a release checkpoint with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ftbc import models as ftbc_models
from ftbc.errors import CheckpointError


RELEASE_NAMES = {"qcfs": "QCFS (putshua/ANN_SNN_QCFS)", "snnc": "SNN Calibration (yhhhli/SNN_Calibration)",
                 "rts": "RTS (Jackn0/snn_optimal_conversion_pipeline)"}


@dataclass(frozen=True)
class Unit:
    """One weighted layer: release and suite module paths of the conv / linear, its BN and its QCFS threshold."""

    src: str
    dst: str
    src_bn: str | None = None
    dst_bn: str | None = None
    src_act: str | None = None
    dst_act: str | None = None


@dataclass(frozen=True)
class Layout:
    """How one release network maps onto one suite architecture."""

    release_arch: str  # what the release calls it
    units: Callable[[nn.Module], list[Unit]]  # from the suite model (on the meta device)
    fixed_pools: Callable[[nn.Module], list[tuple[str, int]]] = lambda model: []  # (release key, kernel)
    caveat: str | None = None  # where the suite's network computes something else


def _blocks(model: nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, block, has a projection shortcut) of a suite ResNet, in order."""
    return [(s, j, not isinstance(block.shortcut, nn.Identity))
            for s, stage in enumerate(model.stages) for j, block in enumerate(stage)]


def _resnet_units(stem: list[Unit], block: Callable[[str, str, bool], list[Unit]], stage: Callable[[int, int], str],
                  head: str) -> Callable[[nn.Module], list[Unit]]:
    def units(model: nn.Module) -> list[Unit]:
        out = list(stem)
        for s, j, proj in _blocks(model):
            out += block(stage(s, j), f"stages.{s}.{j}", proj)
        return out + [Unit(head, "fc")]
    return units


def _qcfs_block(r: str, d: str, proj: bool) -> list[Unit]:
    f = f"{r}.residual_function"
    out = [Unit(f"{f}.0", f"{d}.conv1", f"{f}.1", f"{d}.bn1", f"{f}.2", f"{d}.act1"),
           Unit(f"{f}.3", f"{d}.conv2", f"{f}.4", f"{d}.bn2", f"{r}.act", f"{d}.act2")]
    return out + ([Unit(f"{r}.shortcut.0", f"{d}.shortcut.0", f"{r}.shortcut.1", f"{d}.shortcut.1")] if proj else [])


def _snnc_block(r: str, d: str, proj: bool) -> list[Unit]:
    out = [Unit(f"{r}.conv1", f"{d}.conv1", f"{r}.bn1", f"{d}.bn1"),
           Unit(f"{r}.conv2", f"{d}.conv2", f"{r}.bn2", f"{d}.bn2")]
    return out + ([Unit(f"{r}.downsample.0", f"{d}.shortcut.0", f"{r}.downsample.1", f"{d}.shortcut.1")]
                  if proj else [])


def _rts_block(r: str, d: str, proj: bool) -> list[Unit]:
    out = [Unit(f"{r}.residual.0", f"{d}.conv1"), Unit(f"{r}.residual.3", f"{d}.conv2")]
    return out + ([Unit(f"{r}.identity.0", f"{d}.shortcut.0")] if proj else [])


def _vgg_convs(model: nn.Module) -> list[tuple[int, int, int, int | None, int]]:
    """(block, position in block, conv index, BN index, activation index) of a suite VGG's ``features``."""
    layers = list(model.features)
    out, block, pos = [], 0, 0
    for i, m in enumerate(layers):
        if isinstance(m, nn.AvgPool2d):
            block, pos = block + 1, 0
        elif isinstance(m, nn.Conv2d):
            bn = i + 1 if isinstance(layers[i + 1], nn.BatchNorm2d) else None
            act = next(k for k in range(i + 1, len(layers)) if ftbc_models.is_activation(layers[k]))
            out.append((block, pos, i, bn, act))
            pos += 1
    return out


def _head(model: nn.Module, linears: list[str], acts: list[str | None]) -> list[Unit]:
    """Units of the hidden FC layers (``pre_logits``) and ``fc`` from the release's names, in order."""
    hidden = [i for i, m in enumerate(model.pre_logits) if isinstance(m, nn.Linear)]
    if len(hidden) + 1 != len(linears):
        raise CheckpointError(f"internal: {len(linears)} release linear layers for {len(hidden) + 1} in the suite")
    out = [Unit(src, f"pre_logits.{i}", src_act=act, dst_act=f"pre_logits.{i + 1}" if act else None)
           for src, i, act in zip(linears, hidden, acts)]
    return out + [Unit(linears[-1], "fc")]


def _qcfs_vgg(model: nn.Module) -> list[Unit]:
    # layerB = [conv, bn, IF, Dropout] per conv, then the pool; classifier = Flatten, (Linear, IF, Dropout) x 2, Linear
    out = [Unit(f"layer{b + 1}.{4 * p}", f"features.{c}", f"layer{b + 1}.{4 * p + 1}", f"features.{bn}",
                f"layer{b + 1}.{4 * p + 2}", f"features.{a}") for b, p, c, bn, a in _vgg_convs(model)]
    return out + _head(model, ["classifier.1", "classifier.4", "classifier.7"], ["classifier.2", "classifier.5"])


def _snnc_vgg(model: nn.Module) -> list[Unit]:
    # features = the suite's own indices (conv, [bn,] ReLU, AvgPool); CIFAR: classifier = one Linear
    out = [Unit(f"features.{c}", f"features.{c}", *(2 * [f"features.{bn}" if bn is not None else None]))
           for _, _, c, bn, _ in _vgg_convs(model)]
    if len(model.pre_logits):  # ImageNet: classifier = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
        return out + _head(model, ["classifier.0", "classifier.3", "classifier.6"], [None, None])
    return out + [Unit("classifier", "fc")]


def _snnc_vgg_pools(model: nn.Module) -> list[tuple[str, int]]:
    """The ICML-2021 code's AvgPoolConv: a depthwise conv whose weight is held at 1 / k^2."""
    return [(f"features.{i}.weight", 2) for i, m in enumerate(model.features) if isinstance(m, nn.AvgPool2d)]


def _rts_vgg(model: nn.Module) -> list[Unit]:
    out = [Unit(f"conv{b + 1}_{p + 1}", f"features.{c}") for b, p, c, _, _ in _vgg_convs(model)]
    return out + _head(model, ["fc1", "fc2", "fc3"], [None, None])


_QCFS_RESNET = _resnet_units([Unit("conv1.0", "stem.0", "conv1.1", "stem.1", "conv1.2", "stem.2")], _qcfs_block,
                             lambda s, j: f"conv{s + 2}_x.{j}", "fc")


LAYOUTS: dict[str, dict[str, Layout]] = {
    "qcfs": {
        "resnet20_qcfs": Layout("resnet20 (ResNet4Cifar)", _QCFS_RESNET),
        "resnet18_cifar": Layout("resnet18 (ResNet, [2, 2, 2, 2])", _QCFS_RESNET),
        "resnet34_qcfs": Layout("resnet34 (ResNet, [3, 4, 6, 3])", _QCFS_RESNET),
        "vgg16_qcfs": Layout("vgg16 (CIFAR: classifier from 512)", _qcfs_vgg),
        "vgg16_imagenet": Layout("vgg16 (ImageNet: classifier from 512 x 7 x 7)", _qcfs_vgg),
    },
    "snnc": {
        "resnet20_snnc": Layout("res20 (models/CIFAR/models/resnet.py, --usebn)", _resnet_units(
            [Unit("conv1", "stem.0", "bn1", "stem.1")], _snnc_block, lambda s, j: f"layer{s + 1}.{j}", "fc")),
        "resnet20_snnc_icml": Layout("res20 (ICML 2021 code: ResNet_Cifar_Modified, --usebn)", _resnet_units(
            [Unit("conv1.0", "stem.0", "conv1.1", "stem.1"), Unit("conv1.3", "stem.3", "conv1.4", "stem.4"),
             Unit("conv1.6", "stem.6", "conv1.7", "stem.7")], _snnc_block, lambda s, j: f"layer{s + 1}.{j}", "fc"),
            fixed_pools=lambda model: [("avgpool.weight", 2)]),
        "resnet34_snnc": Layout("res34 (resnet34_snn, --usebn)", _resnet_units(
            [Unit("conv1.0", "stem.0", "conv1.1", "stem.1"), Unit("conv1.3", "stem.3", "conv1.4", "stem.4"),
             Unit("conv1.6", "stem.6", "bn1", "stem.7")], _snnc_block, lambda s, j: f"layer{s + 1}.{j}", "fc")),
        "vgg16_snnc": Layout("VGG16 (CIFAR, --usebn)", _snnc_vgg, fixed_pools=_snnc_vgg_pools),
        "vgg16_imagenet": Layout("vgg16_bn (ImageNet, --usebn)", _snnc_vgg),
        "vgg16_rts_imagenet": Layout("vgg16 (ImageNet, without BN)", _snnc_vgg),
    },
    "rts": {
        "resnet20_rts": Layout("ResNet20", _resnet_units(
            [Unit("pre_process.0", "stem.0"), Unit("pre_process.3", "stem.3"), Unit("pre_process.6", "stem.6")],
            _rts_block, lambda s, j: f"layer{s + 1}.{j}", "classifier.0")),
        "vgg16_rts": Layout("VGG16 (CIFAR, configuration C)", _rts_vgg),
        "vgg16_rts_imagenet": Layout("VGG16 (ImageNet, configuration D)", _rts_vgg),
    },
}


def choose_layout(release: str, arch: str) -> Layout:
    """The layout of ``arch`` in ``release``; another release's architecture or an unknown name is an error."""
    table = LAYOUTS[release]
    if arch in table:
        return table[arch]
    others = [r for r, t in LAYOUTS.items() if arch in t]
    if others:
        where = f"it comes from --from {' or --from '.join(others)}"
    elif arch in ftbc_models.list_models():
        where = "no release trains it"
    else:
        where = "--arch takes the suite's model name, not the release's own name"
    raise CheckpointError(f"--arch {arch} is not a network of the {RELEASE_NAMES[release]} release; {where}. "
                          f"--from {release} maps onto: " +
                          ", ".join(f"{a} ({lay.release_arch})" for a, lay in table.items()))
