"""``ftbc import-checkpoint``: map a release's trained ANN (.pth) onto the suite's model of its lineage.

The QCFS, SNN Calibration and RTS releases save plain PyTorch state dicts with
their own module names. This reads one with ``weights_only=True`` (nothing in a
downloaded file is executed), renames every tensor onto the suite's network,
checks every shape, and writes ``model.safetensors`` + ``model.json`` as
``ftbc train`` does, so ``ftbc evaluate --checkpoint`` and the workflow's
``checkpoints:`` key take it unchanged. A release tensor with no place in the
suite's network, or a suite tensor the file does not provide, is an error:
nothing is dropped or filled in silently.

Three things are transformed, not copied: QCFS's threshold (``thresh``, or
``up`` in the release's older files; shape ``[1]``) becomes the suite's scalar
``lam``; the bias of a conv followed by BatchNorm (QCFS VGG-16, SNN Calibration
VGG-16) is folded into that BatchNorm's running mean (``BN(conv(x) + b)`` equals
``BN'(conv(x))`` with ``running_mean' = running_mean - b``), since the suite's
conv before a BN has no bias; and the fixed weights of the ICML-2021 SNN
Calibration code's pooling convs are checked to be an average pool, which the
suite's ``AvgPool2d`` is without a tensor. docs/interop.md has the tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import Tensor, nn

from ftbc.data import datasets as ftbc_data
from ftbc import models as ftbc_models
from ftbc._io import save_checkpoint, sha256_file
from ftbc.errors import CheckpointError, UserError
from ftbc.train.training import (CHECKPOINT_NAME, activation_values, git_commit, load_model,
                                 resolve_act_kwargs, state_mismatch)

FORMAT = "ftbc.ann.v1"
WRAPPERS = ("state_dict", "model", "net")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RELEASE_NAMES = {"qcfs": "QCFS (putshua/ANN_SNN_QCFS)", "snnc": "SNN Calibration (yhhhli/SNN_Calibration)",
                 "rts": "RTS (Jackn0/snn_optimal_conversion_pipeline)"}
# Activations each release trains with; the first is the default.
RELEASE_ACTS = {"qcfs": ("qcfs",), "snnc": ("relu",), "rts": ("clip", "relu")}


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


# ---------------------------------------------------------------- key layouts


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


# ---------------------------------------------------------------- reading and mapping


def read_state(path: Path) -> tuple[dict[str, Tensor], str]:
    """The release's tensors and the wrapper they were found in; one clear line when the file is not that."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {'a folder, not a .pth file' if path.is_dir() else 'no such file'}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; whatever it is, the file is not usable here
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        reason = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln), lines[0])
        raise CheckpointError(f"{path} cannot be read as a plain state dict with weights_only=True: {reason[:300]} "
                              "(a file that also pickles an optimiser or a model object: in an environment you "
                              "trust, torch.save its state dict alone)") from None

    def tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, Tensor)
                                                        for k, v in d.items())

    if tensors(obj):
        state, wrapper = obj, "bare state dict"
    else:
        inner = next((k for k in WRAPPERS if isinstance(obj, dict) and tensors(obj.get(k))), None)
        if inner is None:
            what = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict)
                    else f"a {type(obj).__name__}")
            raise CheckpointError(f"{path} holds {what}, not a state dict (a dict of tensors, bare or under "
                                  f"{', '.join(repr(k) for k in WRAPPERS)})")
        state, wrapper = obj[inner], f"{{{inner!r}: state dict}}"
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state, wrapper = {k[len("module."):]: v for k, v in state.items()}, wrapper + ", 'module.' prefix removed"
    return dict(state), wrapper


def settings_from_name(path: Path, release: str) -> dict[str, Any]:
    """What the releases write into their file names: QCFS ``vgg16_L[4].pth`` (main_train.py), RTS
    ``vgg16-cifar10-relu1.pth`` (the FTBC scripts' names; relu0 is a plain ReLU)."""
    if release == "qcfs" and (m := re.search(r"_L\[(\d+)\]", path.name)):
        return {"L": int(m.group(1))}
    if release == "rts" and (m := re.search(r"-relu(\d+)\.pth$", path.name)):
        return {"y_th": float(m.group(1))} if int(m.group(1)) > 0 else {"act": "relu"}
    return {}


def rename_old_qcfs(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """QCFS's older files call the threshold ``up`` (``relu.up`` in a block's last activation); main_test.py renames."""
    def new(k: str) -> str:
        if k.endswith(".relu.up"):
            return k[: -len("relu.up")] + "act.thresh"
        return k[: -len("up")] + "thresh" if k.endswith(".up") else k
    return {new(k): v for k, v in state.items()}


def translate(state: dict[str, Tensor], layout: Layout, model: nn.Module) -> tuple[dict[str, Tensor], list[list[str]]]:
    """The suite's state dict from the release's, and the ``[release key, suite key]`` pairs used.

    Raises CheckpointError naming what is mis-shaped, missing or left over, in the release's key names.
    """
    expected = model.state_dict()
    out: dict[str, Tensor] = {}
    pairs: list[list[str]] = []
    used: set[str] = set()
    missing: list[str] = []
    sizes: list[str] = []
    bad: list[str] = []

    def take(src: str, dst: str) -> None:
        if src not in state:
            missing.append(src)
            return
        t, want = state[src], expected.get(dst)
        used.add(src)
        if want is None:
            bad.append(f"{src} has no counterpart {dst} in the suite's network")
            return
        if dst.endswith(".lam") and t.numel() == 1:  # QCFS's threshold [1] -> the suite's scalar lambda
            t = t.reshape(want.shape)
        if t.shape != want.shape:
            sizes.append(f"{src} {list(t.shape)} (suite {dst} {list(want.shape)})")
            return
        out[dst] = t.to(want.dtype) if t.is_floating_point() else t
        pairs.append([src, dst])

    for u in layout.units(model):
        for name in ("weight", "bias"):
            if f"{u.dst}.{name}" in expected:
                take(f"{u.src}.{name}", f"{u.dst}.{name}")
        if u.src_bn and u.dst_bn:
            for name in BN_KEYS:
                take(f"{u.src_bn}.{name}", f"{u.dst_bn}.{name}")
            bias, mean = f"{u.src}.bias", f"{u.dst_bn}.running_mean"
            if f"{u.dst}.bias" not in expected and bias in state and mean in out:
                used.add(bias)
                if state[bias].shape != out[mean].shape:
                    sizes.append(f"{bias} {list(state[bias].shape)} (suite {mean} {list(out[mean].shape)})")
                else:  # BN(conv(x) + b) == BN with running_mean - b applied to conv(x)
                    out[mean] = (out[mean].double() - state[bias].double()).to(out[mean].dtype)
                    pairs.append([bias, mean])
        if u.src_act and u.dst_act:
            take(f"{u.src_act}.thresh", f"{u.dst_act}.lam")
    for key, k in layout.fixed_pools(model):
        if key in state:
            used.add(key)
            if not torch.allclose(state[key].double(), torch.full_like(state[key].double(), 1.0 / (k * k))):
                bad.append(f"{key} is not a fixed {k}x{k} average pool (weights other than 1/{k * k})")
    unexpected = [k for k in state if k not in used]

    def listed(keys: list[str], show: int = 3) -> str:
        return ", ".join(keys[:show]) + (f", ... ({len(keys)} tensors)" if len(keys) > show else "")

    parts = [f"size mismatch {listed(sizes)}"] if sizes else []
    parts += [f"missing {listed(missing)}"] if missing else []
    parts += [f"unexpected (no counterpart in the suite's network) {listed(unexpected)}"] if unexpected else []
    parts += bad
    if not parts:  # every unit mapped; the suite's side must be complete too
        left = state_mismatch(out, expected)
        if left:
            parts.append(f"the suite's network has more: {left}")
    if parts:
        raise CheckpointError("; ".join(parts))
    return out, pairs


def _suite_model(arch: str, act: str, act_kwargs: dict, num_classes: int) -> nn.Module:
    """The suite's network on the meta device: shapes and module types, no memory, no initialisation."""
    with torch.device("meta"):
        return ftbc_models.create_model(arch, num_classes=num_classes, act_layer=act, **act_kwargs)


def _release_classes(state: dict[str, Tensor], layout: Layout, arch: str) -> int:
    """Output classes of the release's classifier (the last unit's weight rows)."""
    with torch.device("meta"):
        probe = ftbc_models.create_model(arch, num_classes=10)
    head = layout.units(probe)[-1].src + ".weight"
    if head not in state or state[head].dim() != 2:
        raise CheckpointError(f"no classifier {head} in the file: is it the {layout.release_arch} of this release? "
                              f"(first keys: {', '.join(list(state)[:4])})")
    return int(state[head].shape[0])


def _hint(state: dict[str, Tensor], release: str, arch: str, act: str, act_kwargs: dict) -> str:
    """The architectures of the same release that the file does fit, for the error message."""
    fits = []
    for other, layout in LAYOUTS[release].items():
        if other == arch:
            continue
        try:
            classes = _release_classes(state, layout, other)
            translate(state, layout, _suite_model(other, act, act_kwargs, classes))
        except (CheckpointError, KeyError, StopIteration, ValueError):
            continue
        fits.append(other)
    return f" (the file fits --arch {' or '.join(fits)})" if fits else ""


# ---------------------------------------------------------------- the command


def _activation(release: str, path: Path, act: str | None, L: int | None,
                y_th: float | None) -> tuple[str, int | None, float | None, list[str]]:
    """The activation and its settings: given, else from the release's file name, else the release's default."""
    named, notes = settings_from_name(path, release), []
    if act is None and "act" in named:
        act = named["act"]
        notes.append(f"--act {act} from the file name (relu0: trained without a clip level)")
    act = act or RELEASE_ACTS[release][0]
    if act not in RELEASE_ACTS[release]:
        raise CheckpointError(f"the {RELEASE_NAMES[release]} release trains with {' or '.join(RELEASE_ACTS[release])}"
                              f" activations; --act {act} would describe another network")
    if act == "qcfs" and L is None and "L" in named:
        L = named["L"]
        notes.append(f"L={L} from the file name")
    if act == "clip" and y_th is None and "y_th" in named:
        y_th = named["y_th"]
        notes.append(f"y_th={y_th:g} from the file name")
    return act, L, y_th, notes


def _dataset(classes: int, dataset: str | None, num_classes: int | None) -> ftbc_data.DatasetInfo:
    """The dataset: given, else the one with as many classes as the file's classifier; they must agree."""
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes}, but the file's classifier has {classes} outputs")
    if dataset is None:
        by_classes = {info.num_classes: name for name, info in ftbc_data.DATASETS.items()}
        if classes not in by_classes:
            raise CheckpointError(f"the classifier has {classes} outputs, which no dataset of the suite has")
        dataset = by_classes[classes]
    info = ftbc_data.dataset_info(dataset)
    if info.num_classes != classes:
        raise CheckpointError(f"--dataset {info.name} has {info.num_classes} classes, the file's classifier {classes}")
    return info


def import_checkpoint(source: str | Path, *, release: str, arch: str, out: str | Path, dataset: str | None = None,
                      num_classes: int | None = None, act: str | None = None, L: int | None = None,
                      y_th: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Map ``source`` (a ``release`` .pth) onto the suite's ``arch``, write ``out/model.safetensors``, reload it.

    Returns the checkpoint path and the metadata :func:`ftbc.training.load_model` read back.
    """
    if release not in LAYOUTS:
        raise UserError(f"unknown release {release!r} (choose from {', '.join(LAYOUTS)})")
    layout = choose_layout(release, arch)
    path = Path(source)
    act, L, y_th, notes = _activation(release, path, act, L, y_th)
    state, wrapper = read_state(path)
    if release == "qcfs":
        renamed = rename_old_qcfs(state)
        if list(renamed) != list(state):
            notes.append("older QCFS key names (up, relu.up) renamed to thresh, act.thresh as the release does")
        state = renamed
    try:
        classes = _release_classes(state, layout, arch)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{_hint(state, release, arch, act, {})}") from None
    info = _dataset(classes, dataset, num_classes)
    act_kwargs = resolve_act_kwargs(act, info.name, arch=arch, L=L, y_th=y_th)
    if (act, L) == ("qcfs", None) or (act, y_th) == ("clip", None):
        key, flag = ("L", "--L") if act == "qcfs" else ("y_th", "--y-th")
        notes.append(f"{key}={act_kwargs[key]:g} assumed (the file does not store it; pass {flag} if it was trained "
                     "with another)")
    model = _suite_model(arch, act, act_kwargs, classes)
    try:
        suite_state, pairs = translate(state, layout, model)
    except CheckpointError as e:
        hint = _hint(state, release, arch, act, act_kwargs)
        raise CheckpointError(f"{path} does not fit {arch} ({layout.release_arch} of {release}): {e}{hint}") from None
    model.load_state_dict(suite_state, strict=True, assign=True)
    values = activation_values(model)
    low = {k: v for k, v in values.get("qcfs_lambdas", {}).items() if not v > 0}
    if low:
        raise CheckpointError(f"QCFS threshold {next(iter(low))} is {next(iter(low.values())):.4g}: the SNN needs "
                              "theta = lambda > 0 in every layer")
    meta = dict(
        dataset=info.name, arch=arch, act=act, act_kwargs=act_kwargs, num_classes=classes,
        image_size=info.image_size, mean=list(info.mean), std=list(info.std),
        recipe={"name": f"release:{release}"}, seed=None, format=FORMAT, **values,
        imported=dict(release=release, release_arch=layout.release_arch, source=str(path),
                      source_sha256=sha256_file(path), wrapper=wrapper, mapping=pairs,
                      folded=[src for src, dst in pairs if dst.endswith(".running_mean") and src.endswith(".bias")],
                      fixed_pools_checked=[k for k, _ in layout.fixed_pools(model) if k in state],
                      caveat=layout.caveat, notes=notes),
        torch_version=torch.__version__, timm_version=timm.__version__, python=sys.version.split()[0],
        git_commit=git_commit(),
    )
    ckpt = save_checkpoint(Path(out) / CHECKPOINT_NAME, suite_state, meta)
    _, meta = load_model(ckpt)  # what ftbc evaluate and the workflow will do with it
    return ckpt, meta


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Map a release's trained ANN (.pth) onto the suite's model of its lineage.",
                                add_help=add_help)
    p.add_argument("source", metavar="IN.pth", help="the release's checkpoint (read with weights_only=True)")
    p.add_argument("--from", dest="release", required=True, choices=tuple(LAYOUTS),
                   help="the release that trained it: qcfs, snnc (SNN Calibration) or rts")
    p.add_argument("--arch", required=True,
                   help="the suite's model for it: " + "; ".join(f"{r}: {', '.join(t)}" for r, t in LAYOUTS.items()))
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100 or imagenet (default: from the classifier's outputs, 10 / 100 / 1000)")
    p.add_argument("--num-classes", type=int, default=None, help="check the classifier has this many outputs")
    p.add_argument("--act", default=None, choices=("qcfs", "relu", "clip"),
                   help="activation (default the release's: qcfs for QCFS, relu for SNNC, clip for RTS; "
                        "relu for an RTS net trained with --thresh 0)")
    p.add_argument("--L", type=int, default=None,
                   help="QCFS quantisation steps, not stored in the file (default as ftbc train: 4 CIFAR, "
                        "8 ImageNet ResNet-34, 16 ImageNet VGG-16)")
    p.add_argument("--y-th", type=float, default=None,
                   help="RTS clip level, the release's --thresh (default 1 CIFAR-10, 2 CIFAR-100, 3 ImageNet)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, model.json)")
    return p


def main(args: argparse.Namespace) -> int:
    ckpt, meta = import_checkpoint(args.source, release=args.release, arch=args.arch, out=args.out,
                                   dataset=args.dataset, num_classes=args.num_classes, act=args.act, L=args.L,
                                   y_th=args.y_th)
    imp = meta["imported"]
    act = ", ".join([meta["act"]] + [f"{k}={v:g}" for k, v in meta["act_kwargs"].items() if k != "init_lambda"])
    folded = f", {len(imp['folded'])} conv biases folded into BN" if imp["folded"] else ""
    print(f"{imp['release']} {imp['release_arch']} -> {meta['arch']} ({act}, {meta['dataset']}, "
          f"{meta['num_classes']} classes): {len(imp['mapping'])} tensors mapped{folded} -> {ckpt}")
    for note in imp["notes"] + ([f"warning: {imp['caveat']}"] if imp["caveat"] else []):
        print(f"  {note}")
    return 0
