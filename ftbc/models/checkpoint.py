"""A trained ANN on disk: the activation settings, building the model a checkpoint's sidecar
names, and loading it back (``model.safetensors`` + ``model.json``, written by ``ftbc train``
and ``ftbc import-checkpoint``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftbc import models as ftbc_models
from ftbc._io import load_checkpoint
from ftbc.data.catalog import dataset_info
from ftbc.errors import CheckpointError, TrainingError
from ftbc.models.activations import ACT_KWARGS, ACTIVATIONS, QCFS_DEFAULT_INIT_LAMBDA, QCFS_DEFAULT_L

# Clip level of RTS's clipped ReLU by dataset (docs/methods.md section 4).
DEFAULT_Y_TH = {"cifar10": 1.0, "cifar100": 2.0, "imagenet": 3.0}
# QCFS quantisation steps L by (dataset, architecture family), the releases' values (docs/methods.md
# section 3): 4 on CIFAR-10/100 (QCFS README, main_train.py -L=4); on ImageNet 8 for ResNet-34 and
# 16 for VGG-16 (FTBC release, QCFS/ANN_SNN_QCFS/run_scripts/imagenet_cali.sh). The family is the
# model name up to its first "_" (resnet34_qcfs -> resnet34, vgg16_imagenet -> vgg16); "*" is any.
# A combination no release trained falls back to DEFAULT_L; --L overrides the table.
QCFS_L: dict[tuple[str, str], int] = {
    ("cifar10", "*"): 4,
    ("cifar100", "*"): 4,
    ("imagenet", "resnet34"): 8,
    ("imagenet", "vgg16"): 16,
}
DEFAULT_L = QCFS_DEFAULT_L  # no release value (QCFS's CIFAR setting)
DEFAULT_INIT_LAMBDA = QCFS_DEFAULT_INIT_LAMBDA
CHECKPOINT_NAME = "model.safetensors"
# The defaults above as the CLI help words them (ftbc train, ftbc import-checkpoint), read from the tables.
QCFS_L_HELP = (f"{QCFS_L[('cifar10', '*')]} CIFAR, {QCFS_L[('imagenet', 'resnet34')]} ImageNet ResNet-34, "
               f"{QCFS_L[('imagenet', 'vgg16')]} ImageNet VGG-16")
Y_TH_HELP = (f"{DEFAULT_Y_TH['cifar10']:g} CIFAR-10, {DEFAULT_Y_TH['cifar100']:g} CIFAR-100, "
             f"{DEFAULT_Y_TH['imagenet']:g} ImageNet")


def qcfs_levels(dataset: str, arch: str | None = None) -> int:
    """QCFS's L for ``dataset`` and model ``arch`` from :data:`QCFS_L` (:data:`DEFAULT_L` where it has none)."""
    name = dataset_info(dataset).name
    family = arch.split("_", 1)[0] if arch else None
    for key in ((name, family), (name, "*")):
        if key in QCFS_L:
            return QCFS_L[key]
    return DEFAULT_L


def resolve_act_kwargs(act: str, dataset: str, *, arch: str | None = None, L: int | None = None,
                       init_lambda: float | None = None, y_th: float | None = None) -> dict[str, Any]:
    """The activation's settings with defaults filled in; a setting for another activation is an error.

    QCFS's default L depends on the dataset and the architecture (:data:`QCFS_L`); an explicit ``L`` wins.
    """
    if act not in ACTIVATIONS:
        raise TrainingError(f"unknown activation {act!r} (choose from {', '.join(ACTIVATIONS)})")
    given = {"--L": L, "--init-lambda": init_lambda, "--y-th": y_th}
    allowed = tuple("--" + k.replace("_", "-") for k in ACT_KWARGS[act])  # the settings of ACT_KWARGS as options
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise TrainingError(f"{', '.join(wrong)} does not apply to --act {act}")
    if act == "qcfs":
        L = qcfs_levels(dataset, arch) if L is None else L
        init_lambda = DEFAULT_INIT_LAMBDA if init_lambda is None else init_lambda
        if int(L) != L or L < 1 or not init_lambda > 0:
            raise TrainingError(f"QCFS needs an integer L >= 1 and init_lambda > 0, got L={L}, init_lambda={init_lambda}")
        return {"L": int(L), "init_lambda": float(init_lambda)}
    if act == "clip":
        y_th = DEFAULT_Y_TH[dataset_info(dataset).name] if y_th is None else y_th
        if not y_th > 0:
            raise TrainingError(f"--y-th must be > 0, got {y_th}")
        return {"y_th": float(y_th)}
    return {}


def activation_values(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-layer QCFS lambdas and clip levels: ``{'qcfs_lambdas': {name: lam}, 'clip_y_th': {name: y_th}}``."""
    out: dict[str, dict[str, float]] = {}
    for name, m in model.named_modules():
        if isinstance(m, ftbc_models.QCFS):
            out.setdefault("qcfs_lambdas", {})[name] = float(m.lam.detach())
        elif isinstance(m, ftbc_models.ClipReLU):
            out.setdefault("clip_y_th", {})[name] = float(m.y_th)
    return out


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise TrainingError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def _build_model(arch: str, act: str, act_kwargs: dict, num_classes: int) -> nn.Module:
    names = ftbc_models.list_models()
    if arch not in names:
        raise TrainingError(f"unknown architecture {arch!r} (choose from {', '.join(names)})")
    try:
        return ftbc_models.create_model(arch, num_classes=num_classes, act_layer=act, **act_kwargs)
    except (ValueError, TypeError) as e:  # a setting the activation does not take, a bad value
        raise TrainingError(f"cannot build {arch} with --act {act} {act_kwargs}: {e}") from None


def state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], show: int = 3) -> str:
    """What keeps ``state`` from loading into a model with ``expected``: shapes, then missing/unexpected modules."""
    def modules(keys: list[str]) -> str:
        tops = list(dict.fromkeys(k.split(".")[0] for k in keys))
        more = ", ..." if len(tops) > show else ""
        return f"{', '.join(tops[:show])}{more} ({len(keys)} tensors)"

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    sizes = [f"{k} {list(state[k].shape)} (model {list(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    parts = [f"size mismatch {', '.join(sizes[:show])}{', ...' if len(sizes) > show else ''}"] if sizes else []
    parts += [f"missing {modules(missing)}"] if missing else []
    parts += [f"unexpected {modules(unexpected)}"] if unexpected else []
    return "; ".join(parts)


def load_model(checkpoint_path, device="cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from its sidecar and load the weights strictly.

    Args:
        checkpoint_path: ``model.safetensors`` or the run folder holding it.
        device: where to put the model.

    Returns:
        ``(model in eval mode, meta)``.

    Raises:
        CheckpointError: missing, corrupted, or not matching the architecture it names.
    """
    path = Path(checkpoint_path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state, meta = load_checkpoint(path)
    missing = [k for k in ("arch", "act", "act_kwargs", "num_classes") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {path.with_suffix('.json')} lacks {', '.join(missing)}")
    try:
        model = _build_model(meta["arch"], meta["act"], meta["act_kwargs"], meta["num_classes"])
    except (RuntimeError, ValueError, TypeError, TrainingError) as e:
        raise CheckpointError(f"checkpoint {path} names a model that cannot be built: {str(e).splitlines()[0]}") \
            from None
    mismatch = state_mismatch(state, model.state_dict())
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not fit {meta['arch']} ({meta['act']}, "
                              f"{meta['num_classes']} classes): {mismatch}")
    model.load_state_dict(state, strict=True)
    return model.to(_check_device(device)).eval(), meta
