"""Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe; evaluate; reload.

Plain functions in the style of torchvision's ``references/classification``:
:func:`train_one_epoch`, :func:`evaluate`, :func:`train`, then the CLI's
:func:`get_args_parser` and :func:`main`. Recipes (optimiser, schedule,
augmentation) are data in ``ftbc/recipes/*.yaml``; see :mod:`ftbc.recipes`.

Outputs of one run in ``out/``:

- ``model.safetensors`` + ``model.json``: the weights and their metadata (the
  resolved configuration, per-epoch metrics, test / holdout accuracy, the
  learned QCFS lambdas or the clip levels, versions, git commit, sha256);
- ``run.yaml``: the resolved arguments, enough to rerun the same training.

Batched pipeline: for an in-memory uint8 dataset (CIFAR) whose recipe asks
for crop + flip only, batches are cut from one uint8 tensor (on the training
device) and augmented batched (:func:`random_crop_flip`). Measured on one CPU
thread: 3 ms per batch of 128 against 13 ms for per-sample ``transforms.v2``
in a DataLoader, and about 240 ms for a vgg_small training step; on a GPU the
per-sample path would be the bottleneck (a vgg_small epoch takes 1.7 s on an
H200). Recipes with AutoAugment or Cutout use the data module's per-sample
transforms in a DataLoader (``--workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import timm
import torch
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import Tensor, nn
from tqdm import tqdm

from ftbc import data as ftbc_data
from ftbc import models as ftbc_models
from ftbc._io import load_checkpoint, save_checkpoint, write_text
from ftbc.errors import CheckpointError, UserError
from ftbc.recipes import load_recipe, validate_recipe

ACTS = ("relu", "qcfs", "clip")
# Clip level of RTS's clipped ReLU by dataset (METHODS.md section 4).
DEFAULT_Y_TH = {"cifar10": 1.0, "cifar100": 2.0, "imagenet": 3.0}
DEFAULT_L = 4  # QCFS on CIFAR (METHODS.md section 3); ImageNet uses 8 or 16
DEFAULT_INIT_LAMBDA = 8.0
EVAL_BATCH_SIZE = 500
CHECKPOINT_NAME = "model.safetensors"


class TrainingError(UserError):
    """A training run cannot go on (bad settings, or the loss diverged)."""


# ---------------------------------------------------------------- batching


def random_crop_flip(images: Tensor, *, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, batched.

    The same distribution as torchvision's ``RandomCrop(H, padding)`` then
    ``RandomHorizontalFlip(0.5)``: offsets uniform in [0, 2 * padding] on each
    axis, flip with probability 1/2. Random numbers are drawn on the CPU from
    ``generator`` (offsets y, offsets x, flips), so a seed gives the same
    batch on every device.

    Args:
        images: ``[N, C, H, W]``, any dtype (uint8 in the trainer).
        padding: zero padding on each side before the crop; 0 for no crop.
        flip: whether to flip a random half of the images left-right.
        generator: the source of randomness (the training generator).

    Returns:
        ``[N, C, H, W]``, same dtype and device as ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip expects [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = off_y[:, None] + torch.arange(h)                       # [N, H]
    cols = off_x[:, None] + torch.arange(w)                       # [N, W]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    dev = images.device
    padded = F.pad(images, (padding,) * 4) if padding else images
    return padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


class TensorBatches:
    """Batches of normalised float images cut from in-memory uint8 tensors.

    A minimal stand-in for a DataLoader over ``(images, labels)`` (yields
    ``(x [B, C, H, W] float32, y [B] int64)`` on ``device``); shuffling and
    crop/flip draw from ``generator``, so iteration is reproducible.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, mean, std, device="cpu",
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False,
                 generator: torch.Generator | None = None) -> None:
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.crop_padding, self.flip, self.generator = crop_padding, flip, generator
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size].to(self.device)
            x = self.images[idx]
            if self.crop_padding or self.flip:
                x = random_crop_flip(x, padding=self.crop_padding, flip=self.flip, generator=self.generator)
            yield (x.float().div_(255.0) - self.mean) / self.std, self.labels[idx]


def in_memory_uint8(dataset) -> tuple[Tensor, Tensor] | None:
    """``(images [N, C, H, W] uint8, labels [N] int64)`` of an untransformed dataset, or None.

    None when the samples are not uint8 tensors (an ImageFolder of files, say),
    in which case the caller falls back to per-sample transforms.
    """
    if len(dataset) == 0:
        return None
    x0, _ = dataset[0]
    if not (isinstance(x0, Tensor) and x0.dtype == torch.uint8 and x0.dim() == 3):
        return None
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(images, Tensor) and images.shape[1:] == x0.shape and labels is not None:
        return images, torch.as_tensor(labels, dtype=torch.int64)
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)


def build_loaders(dataset: str, data_root, recipe: dict, *, seed: int, holdout: int = 0, holdout_seed: int = 0,
                  num_workers: int = 0, download: bool = False, device="cpu") -> dict[str, Any]:
    """Training, test and (if ``holdout``) holdout batches for a recipe.

    Returns a dict with ``train``, ``test``, ``holdout`` (None without one),
    ``info`` (the DatasetInfo), ``pipeline`` ('batched' or 'per-sample') and
    ``n_train``. The holdout is ``holdout`` training images (chosen by
    ``holdout_split(seed=holdout_seed)``) that are left out of training and
    evaluated without augmentation.
    """
    info = ftbc_data.dataset_info(dataset)
    aug = recipe["augmentation"]
    g = torch.Generator().manual_seed(seed)
    raw_train = ftbc_data.load_split(dataset, data_root, "train", download=download)
    raw_test = ftbc_data.load_split(dataset, data_root, "test", download=download)
    train_idx = holdout_idx = None
    if holdout:
        if not 0 < holdout < len(raw_train):
            raise TrainingError(f"--holdout must be between 1 and {len(raw_train) - 1}, got {holdout}")
        train_idx, holdout_idx = (torch.as_tensor(i, dtype=torch.int64)
                                  for i in ftbc_data.holdout_split(len(raw_train), holdout, seed=holdout_seed))
    tensors = None if aug["autoaugment"] or aug["cutout"] else in_memory_uint8(raw_train)
    test_tensors = in_memory_uint8(raw_test) if tensors is not None else None
    if tensors is not None and test_tensors is not None:
        xs, ys = tensors
        common = dict(mean=info.mean, std=info.std, device=device)
        pad = 4 if aug["crop"] else 0
        tr = slice(None) if train_idx is None else train_idx
        loaders = dict(
            train=TensorBatches(xs[tr], ys[tr], batch_size=recipe["batch_size"], shuffle=True, crop_padding=pad,
                                flip=aug["flip"], generator=g, **common),
            test=TensorBatches(*test_tensors, batch_size=EVAL_BATCH_SIZE, **common),
            holdout=None if holdout_idx is None else TensorBatches(
                xs[holdout_idx], ys[holdout_idx], batch_size=EVAL_BATCH_SIZE, **common),
            pipeline="batched", n_train=len(ys[tr]))
    else:
        loaders = _per_sample_loaders(dataset, raw_train, raw_test, recipe, seed=seed, train_idx=train_idx,
                                      holdout_idx=holdout_idx, num_workers=num_workers)
    loaders["info"] = info
    return loaders


def _with_transform(ds, transform):
    """A shallow copy of a loaded dataset with another per-sample ``transform`` (no second scan or decode)."""
    if not hasattr(ds, "transform"):
        raise TrainingError(f"cannot set a transform on a {type(ds).__name__} dataset")
    ds = copy.copy(ds)
    ds.transform = transform
    return ds


def _per_sample_loaders(dataset, raw_train, raw_test, recipe, *, seed, train_idx, holdout_idx,
                        num_workers) -> dict[str, Any]:
    """DataLoaders with the data module's per-sample transforms (AutoAugment, Cutout, ImageNet)."""
    from torch.utils.data import Subset

    aug = recipe["augmentation"]
    if not (aug["crop"] and aug["flip"]):
        raise TrainingError("recipes without crop or flip are supported only for in-memory datasets "
                            "without AutoAugment / Cutout")
    t_train = ftbc_data.build_transform(dataset, train=True, autoaugment=aug["autoaugment"], cutout=aug["cutout"])
    t_eval = ftbc_data.build_transform(dataset, train=False)
    train_ds, test_ds = _with_transform(raw_train, t_train), _with_transform(raw_test, t_eval)
    holdout_loader = None
    if holdout_idx is not None:
        train_ds = Subset(train_ds, train_idx.tolist())
        hold_ds = Subset(_with_transform(raw_train, t_eval), holdout_idx.tolist())
        holdout_loader = ftbc_data.make_loader(hold_ds, EVAL_BATCH_SIZE, shuffle=False, num_workers=num_workers)
    return dict(
        train=ftbc_data.make_loader(train_ds, recipe["batch_size"], shuffle=True, seed=seed,
                                    num_workers=num_workers),
        test=ftbc_data.make_loader(test_ds, EVAL_BATCH_SIZE, shuffle=False, num_workers=num_workers),
        holdout=holdout_loader, pipeline="per-sample", n_train=len(train_ds))


# ---------------------------------------------------------------- optimisation


def create_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """SGD from timm's factory: ``opt='momentum'`` is plain heavy-ball SGD (the releases'), 'sgd' is Nesterov.

    Weight decay: timm's default ``filter_bias_and_bn=True`` puts every
    parameter with ndim <= 1 (biases, BN affine and the QCFS scalar ``lam``) in
    a group without weight decay. This departs from the QCFS release, whose
    weight decay covers every parameter and so also shrinks lambda; the suite
    keeps timm's rule for all lineages and records it as
    ``weight_decay_excludes`` in the checkpoint metadata.
    """
    return create_optimizer_v2(model, opt=recipe["opt"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                               momentum=recipe["momentum"], filter_bias_and_bn=True)


def create_scheduler(optimizer: torch.optim.Optimizer, recipe: dict, epochs: int):
    """timm's cosine or multistep schedule over ``epochs``; call ``.step(epoch + 1)`` after each epoch.

    Step milestones count from epoch 0 as torch's ``MultiStepLR`` (and the RTS
    release) do: milestone 100 means epochs 0-99 run at lr, 100 on at
    lr * gamma. timm's multistep applies milestone m from epoch m - 1 (its
    documented historical convention), so the milestones are passed as m + 1.
    """
    common = dict(num_epochs=epochs, warmup_epochs=recipe["warmup_epochs"], min_lr=0.0)
    if recipe["schedule"] == "cosine":
        scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", **common)
    else:
        scheduler, _ = create_scheduler_v2(optimizer, sched="multistep", decay_rate=recipe["gamma"],
                                           decay_milestones=[m + 1 for m in recipe["milestones"]], **common)
    return scheduler


# ---------------------------------------------------------------- loops


def _bar(loader, desc: str, progress: bool):
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and sys.stderr.isatty()))


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable, device, *, desc: str = "train", progress: bool = True) -> dict[str, float]:
    """One pass over ``loader`` with SGD steps; returns ``{'loss': mean, 'acc': top-1 %}`` on the training batches."""
    model.train()
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = _bar(loader, desc, progress)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
    bar.close()
    return {"loss": loss_sum.item() / max(seen, 1), "acc": 100.0 * correct.item() / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device, *, desc: str = "eval", progress: bool = False) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode) over ``(x, y)`` batches of ``loader``."""
    model.eval()
    device = torch.device(device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for x, y in _bar(loader, desc, progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum()
        seen += len(y)
    if seen == 0:
        raise TrainingError("evaluate: the loader yielded no samples")
    return 100.0 * correct.item() / seen


# ---------------------------------------------------------------- run


def resolve_act_kwargs(act: str, dataset: str, *, L: int | None = None, init_lambda: float | None = None,
                       y_th: float | None = None) -> dict[str, Any]:
    """The activation's settings with defaults filled in; a setting for another activation is an error."""
    if act not in ACTS:
        raise TrainingError(f"unknown activation {act!r} (choose from {', '.join(ACTS)})")
    given = {"--L": L, "--init-lambda": init_lambda, "--y-th": y_th}
    allowed = {"relu": (), "qcfs": ("--L", "--init-lambda"), "clip": ("--y-th",)}[act]
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise TrainingError(f"{', '.join(wrong)} does not apply to --act {act}")
    if act == "qcfs":
        L = DEFAULT_L if L is None else L
        init_lambda = DEFAULT_INIT_LAMBDA if init_lambda is None else init_lambda
        if int(L) != L or L < 1 or not init_lambda > 0:
            raise TrainingError(f"QCFS needs an integer L >= 1 and init_lambda > 0, got L={L}, init_lambda={init_lambda}")
        return {"L": int(L), "init_lambda": float(init_lambda)}
    if act == "clip":
        y_th = DEFAULT_Y_TH[ftbc_data.dataset_info(dataset).name] if y_th is None else y_th
        if not y_th > 0:
            raise TrainingError(f"--y-th must be > 0, got {y_th}")
        return {"y_th": float(y_th)}
    return {}


def apply_overrides(recipe: dict, *, epochs: int | None = None, batch_size: int | None = None,
                    lr: float | None = None) -> dict:
    """A copy of ``recipe`` with the given values replaced and checked; ``overrides`` lists them."""
    given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)) if v is not None}
    for k, v in given.items():
        if (k != "lr" and (int(v) != v or v < 1)) or (k == "lr" and not v > 0):
            raise TrainingError(f"--{k.replace('_', '-')} must be {'> 0' if k == 'lr' else 'an integer >= 1'}, got {v}")
    base = {k: v for k, v in recipe.items() if k not in ("name", "path", "overrides")}
    out = validate_recipe({**base, **given}, where=f"recipe {recipe.get('name', '?')}")
    out.update(name=recipe.get("name"), path=recipe.get("path"),
               overrides={**recipe.get("overrides", {}), **given})
    return out


def activation_values(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-layer QCFS lambdas and clip levels: ``{'qcfs_lambdas': {name: lam}, 'clip_y_th': {name: y_th}}``."""
    out: dict[str, dict[str, float]] = {}
    for name, m in model.named_modules():
        if isinstance(m, ftbc_models.QCFS):
            out.setdefault("qcfs_lambdas", {})[name] = float(m.lam.detach())
        elif isinstance(m, ftbc_models.ClipReLU):
            out.setdefault("clip_y_th", {})[name] = float(m.y_th)
    return out


def git_commit() -> str | None:
    """The suite's git commit (with '-dirty' if the tree has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None


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


def train(*, dataset: str, data_root, arch: str, act: str = "relu", act_kwargs: dict | None = None,
          recipe: dict | str, seed: int = 0, out, device="cpu", num_workers: int = 0, epochs: int | None = None,
          download: bool = False, holdout: int = 0, holdout_seed: int = 0, deterministic: bool = False,
          progress: bool = True, log=functools.partial(print, flush=True)) -> dict[str, Any]:
    """Train ``arch`` with activation ``act`` on ``dataset`` by ``recipe``; write the checkpoint to ``out``.

    Seeds ``torch.manual_seed(seed)`` before building the model, and a training
    generator (shuffling, batched crop/flip) from the same seed: two CPU runs
    with the same arguments and thread count give bit-identical weights. On
    CUDA, ``deterministic=True`` also asks for deterministic kernels.

    Returns the metrics: ``train_loss``, ``train_acc``, ``lr`` and
    ``epoch_time_s`` per epoch, ``test_acc``, ``holdout_acc`` (None without a
    holdout), ``wall_time_s`` and ``cpu_time_s`` (process CPU time, all threads).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = apply_overrides(load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe, epochs=epochs)
    info = ftbc_data.dataset_info(dataset)  # DataError (a UserError) for an unknown name
    act_kwargs = {**resolve_act_kwargs(act, info.name), **(act_kwargs or {})}  # record the defaults too
    dataset, dev, out = info.name, _check_device(device), Path(out)
    with _deterministic(deterministic):
        torch.manual_seed(seed)
        # Train in channels_last: oneDNN's convolutions are ~25 % faster so on CPU (cuDNN's too on GPU);
        # the model returns to the default layout before the final evaluation and the checkpoint.
        model = _build_model(arch, act, act_kwargs, info.num_classes).to(dev, memory_format=torch.channels_last)
        loaders = build_loaders(dataset, data_root, recipe, seed=seed, holdout=holdout, holdout_seed=holdout_seed,
                                num_workers=num_workers, download=download, device=dev)
        metrics = fit(model, loaders["train"], recipe, dev, progress=progress, log=log)
        model = model.to(memory_format=torch.contiguous_format)  # the layout load_model() rebuilds
        metrics["test_acc"] = evaluate(model, loaders["test"], dev, desc="test", progress=progress)
        metrics["holdout_acc"] = (None if loaders["holdout"] is None
                                  else evaluate(model, loaders["holdout"], dev, desc="holdout", progress=progress))
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["cpu_time_s"] = time.process_time() - c0  # all threads; tells a busy machine from a slow run
    config = dict(dataset=dataset, data_root=str(data_root), arch=arch, act=act, act_kwargs=act_kwargs,
                  num_classes=info.num_classes, image_size=info.image_size, mean=list(info.mean), std=list(info.std),
                  recipe=recipe, seed=seed, epochs=recipe["epochs"], holdout=holdout, holdout_seed=holdout_seed,
                  device=str(dev), deterministic=deterministic, num_workers=num_workers,
                  pipeline=loaders["pipeline"], n_train=loaders["n_train"], out=str(out))
    _write_outputs(model, out, config, metrics)
    return metrics


def fit(model: nn.Module, loader: Iterable, recipe: dict, device, *, progress: bool = True,
        log=print) -> dict[str, list[float]]:
    """Run the recipe's epochs over ``loader``: optimiser, schedule and loss from ``recipe``.

    Returns per-epoch ``train_loss``, ``train_acc`` (%), ``lr`` and
    ``epoch_time_s``. Raises :class:`TrainingError` if the loss stops being finite.
    """
    n_epochs = recipe["epochs"]
    optimizer = create_optimizer(model, recipe)
    scheduler = create_scheduler(optimizer, recipe, n_epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    metrics: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "lr": [], "epoch_time_s": []}
    for epoch in range(n_epochs):
        te = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, criterion, optimizer, loader, device,
                                desc=f"epoch {epoch + 1}/{n_epochs}", progress=progress)
        if not math.isfinite(stats["loss"]):
            raise TrainingError(f"training diverged: loss {stats['loss']} in epoch {epoch + 1} (try a lower --lr)")
        scheduler.step(epoch + 1)
        for k, v in (("train_loss", stats["loss"]), ("train_acc", stats["acc"]), ("lr", lr),
                     ("epoch_time_s", time.perf_counter() - te)):
            metrics[k].append(v)
        if progress:
            log(f"epoch {epoch + 1}/{n_epochs}  loss {stats['loss']:.4f}  train acc {stats['acc']:.2f}%  "
                f"lr {lr:.4g}  {metrics['epoch_time_s'][-1]:.1f}s")
    return metrics


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic CUDA kernels inside the block (torchvision's --use-deterministic-algorithms); restored after.

    ``warn_only``: a kernel without a deterministic version (adaptive average
    pooling's CUDA backward) warns instead of failing the run.
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at its first use
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def _write_outputs(model: nn.Module, out: Path, config: dict, metrics: dict) -> None:
    meta = {
        **config, "format": "ftbc.ann.v1", "metrics": metrics, **activation_values(model),
        "weight_decay_excludes": "parameters with ndim <= 1 (biases, BN, QCFS lambda): timm filter_bias_and_bn",
        "torch_version": torch.__version__, "timm_version": timm.__version__, "python": sys.version.split()[0],
        "num_threads": torch.get_num_threads(), "git_commit": git_commit(),
    }
    save_checkpoint(out / CHECKPOINT_NAME, model.state_dict(), meta)
    write_text(out / "run.yaml", yaml.safe_dump(config, sort_keys=False))


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
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, TrainingError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {meta['arch']} ({meta['act']}): "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(_check_device(device)).eval(), meta


# ---------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe.",
                                add_help=add_help)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet (default cifar10)")
    g.add_argument("--data-root", required=True, help="folder of the dataset (see ftbc.data)")
    g.add_argument("--download", action="store_true", help="download the dataset if torchvision can")
    g.add_argument("--holdout", type=int, default=0, help="training images held out of training (default 0)")
    g.add_argument("--holdout-seed", type=int, default=0, help="seed of the holdout split (default 0)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers for per-sample pipelines (default 0)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", required=True, help="model name (ftbc.models.list_models())")
    g.add_argument("--act", default="relu", choices=ACTS, help="activation (default relu)")
    g.add_argument("--L", type=int, default=None, help=f"QCFS quantisation steps (default {DEFAULT_L})")
    g.add_argument("--init-lambda", type=float, default=None,
                   help=f"QCFS initial lambda (default {DEFAULT_INIT_LAMBDA})")
    g.add_argument("--y-th", type=float, default=None,
                   help="clip level of --act clip (default 1 CIFAR-10, 2 CIFAR-100, 3 ImageNet)")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default="quick_cpu", help="recipe name or YAML path (default quick_cpu)")
    g.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    g.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    g.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (model.safetensors, model.json, run.yaml)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic CUDA kernels (slower; CPU runs are deterministic anyway)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return p


def main(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise TrainingError(f"--workers must be >= 0, got {args.workers}")
    if args.holdout < 0:
        raise TrainingError(f"--holdout must be >= 0, got {args.holdout}")
    recipe = apply_overrides(load_recipe(args.recipe), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    act_kwargs = resolve_act_kwargs(args.act, args.dataset, L=args.L, init_lambda=args.init_lambda, y_th=args.y_th)
    metrics = train(dataset=args.dataset, data_root=args.data_root, arch=args.arch, act=args.act,
                    act_kwargs=act_kwargs, recipe=recipe, seed=args.seed, out=args.out, device=args.device,
                    num_workers=args.workers, download=args.download, holdout=args.holdout,
                    holdout_seed=args.holdout_seed, deterministic=args.deterministic, progress=not args.quiet)
    hold = "" if metrics["holdout_acc"] is None else f", holdout {metrics['holdout_acc']:.2f}%"
    print(f"test accuracy {metrics['test_acc']:.2f}%{hold} in {metrics['wall_time_s']:.0f}s "
          f"-> {Path(args.out) / CHECKPOINT_NAME}")
    return 0
