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
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ftbc.data.catalog import DATASETS, DATASET_NAMES, DATASET_NAMES_TEXT, DatasetInfo, dataset_info
from ftbc import models as ftbc_models
from ftbc._io import git_commit, save_checkpoint, sha256_file
from ftbc.errors import CheckpointError, UserError
from ftbc.models.activations import ACTIVATIONS
from ftbc.interop.release_layouts import LAYOUTS, RELEASE_NAMES, Layout, Unit, choose_layout
from ftbc.models.checkpoint import (CHECKPOINT_NAME, QCFS_L_HELP, Y_TH_HELP, activation_values, load_model,
                                    resolve_act_kwargs, state_mismatch)

FORMAT = "ftbc.ann.v1"
WRAPPERS = ("state_dict", "model", "net")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Activations each release trains with; the first is the default.
RELEASE_ACTS = {"qcfs": ("qcfs",), "snnc": ("relu",), "rts": ("clip", "relu")}


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
    t = _Translation(state, model.state_dict())
    for u in layout.units(model):
        t.unit(u)
    for key, k in layout.fixed_pools(model):
        t.fixed_pool(key, k)
    problems = t.problems()
    if problems:
        raise CheckpointError("; ".join(problems))
    return t.out, t.pairs


class _Translation:
    """One release state dict on its way onto the suite's keys: the tensors placed so far and every problem met.

    Problems are collected, not raised at the first, so that one error message names them all.
    """

    def __init__(self, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
        self.state, self.expected = state, expected
        self.out: dict[str, Tensor] = {}
        self.pairs: list[list[str]] = []
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.sizes: list[str] = []
        self.bad: list[str] = []

    def take(self, src: str, dst: str) -> None:
        """Place release tensor ``src`` at suite key ``dst`` (cast to the suite's dtype), or note why not."""
        if src not in self.state:
            self.missing.append(src)
            return
        t, want = self.state[src], self.expected.get(dst)
        self.used.add(src)
        if want is None:
            self.bad.append(f"{src} has no counterpart {dst} in the suite's network")
            return
        if dst.endswith(".lam") and t.numel() == 1:  # QCFS's threshold [1] -> the suite's scalar lambda
            t = t.reshape(want.shape)
        if t.shape != want.shape:
            self.sizes.append(f"{src} {list(t.shape)} (suite {dst} {list(want.shape)})")
            return
        self.out[dst] = t.to(want.dtype) if t.is_floating_point() else t
        self.pairs.append([src, dst])

    def unit(self, u: Unit) -> None:
        """A layer with its BatchNorm and activation, when the layout gives them."""
        for name in ("weight", "bias"):
            if f"{u.dst}.{name}" in self.expected:
                self.take(f"{u.src}.{name}", f"{u.dst}.{name}")
        if u.src_bn and u.dst_bn:
            for name in BN_KEYS:
                self.take(f"{u.src_bn}.{name}", f"{u.dst_bn}.{name}")
            self.fold_bias(u)
        if u.src_act and u.dst_act:
            self.take(f"{u.src_act}.thresh", f"{u.dst_act}.lam")

    def fold_bias(self, u: Unit) -> None:
        """A conv bias the suite's conv (followed by BN) does not have goes into that BN's running mean."""
        bias, mean = f"{u.src}.bias", f"{u.dst_bn}.running_mean"
        if f"{u.dst}.bias" in self.expected or bias not in self.state or mean not in self.out:
            return
        self.used.add(bias)
        b, m = self.state[bias], self.out[mean]
        if b.shape != m.shape:
            self.sizes.append(f"{bias} {list(b.shape)} (suite {mean} {list(m.shape)})")
        else:  # BN(conv(x) + b) == BN with running_mean - b applied to conv(x)
            self.out[mean] = (m.double() - b.double()).to(m.dtype)
            self.pairs.append([bias, mean])

    def fixed_pool(self, key: str, k: int) -> None:
        """A release's pooling conv must hold the fixed weights of a k x k average pool: the suite has no tensor."""
        if key not in self.state:
            return
        self.used.add(key)
        w = self.state[key].double()
        if not torch.allclose(w, torch.full_like(w, 1.0 / (k * k))):
            self.bad.append(f"{key} is not a fixed {k}x{k} average pool (weights other than 1/{k * k})")

    def problems(self) -> list[str]:
        """What keeps the mapping from being complete: mis-shaped, missing, left over, wrong; [] when it is."""
        unexpected = [k for k in self.state if k not in self.used]
        parts = [f"size mismatch {_listed(self.sizes)}"] if self.sizes else []
        parts += [f"missing {_listed(self.missing)}"] if self.missing else []
        parts += [f"unexpected (no counterpart in the suite's network) {_listed(unexpected)}"] if unexpected else []
        parts += self.bad
        if not parts:  # every unit mapped; the suite's side must be complete too
            left = state_mismatch(self.out, self.expected)
            if left:
                parts.append(f"the suite's network has more: {left}")
        return parts


def _listed(keys: list[str], show: int = 3) -> str:
    """The first few keys and how many there are, for an error message."""
    return ", ".join(keys[:show]) + (f", ... ({len(keys)} tensors)" if len(keys) > show else "")


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


def _dataset(classes: int, dataset: str | None, num_classes: int | None) -> DatasetInfo:
    """The dataset: given, else the one with as many classes as the file's classifier; they must agree."""
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes}, but the file's classifier has {classes} outputs")
    if dataset is None:
        by_classes = {info.num_classes: name for name, info in DATASETS.items()}
        if classes not in by_classes:
            raise CheckpointError(f"the classifier has {classes} outputs, which no dataset of the suite has")
        dataset = by_classes[classes]
    info = dataset_info(dataset)
    if info.num_classes != classes:
        raise CheckpointError(f"--dataset {info.name} has {info.num_classes} classes, the file's classifier {classes}")
    return info


def import_checkpoint(source: str | Path, *, release: str, arch: str, out: str | Path, dataset: str | None = None,
                      num_classes: int | None = None, act: str | None = None, L: int | None = None,
                      y_th: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Map ``source`` (a ``release`` .pth) onto the suite's ``arch``, write ``out/model.safetensors``, reload it.

    Returns the checkpoint path and the metadata :func:`ftbc.models.checkpoint.load_model` read back.
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
                   help=f"{DATASET_NAMES_TEXT} (default: from the classifier's outputs, "
                        f"{' / '.join(str(DATASETS[d].num_classes) for d in DATASET_NAMES)})")
    p.add_argument("--num-classes", type=int, default=None, help="check the classifier has this many outputs")
    p.add_argument("--act", default=None, choices=ACTIVATIONS,
                   help="activation (default the release's: qcfs for QCFS, relu for SNNC, clip for RTS; "
                        "relu for an RTS net trained with --thresh 0)")
    p.add_argument("--L", type=int, default=None,
                   help=f"QCFS quantisation steps, not stored in the file (default as ftbc train: {QCFS_L_HELP})")
    p.add_argument("--y-th", type=float, default=None,
                   help=f"RTS clip level, the release's --thresh (default {Y_TH_HELP})")
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
