"""Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe; evaluate; reload.

Plain functions in the style of torchvision's ``references/classification``:
:func:`train_one_epoch`, :func:`evaluate`, :func:`fit`, :func:`train`, then
the CLI's :func:`get_args_parser` and :func:`main`. Recipes (optimiser,
schedule, augmentation) are data in ``ftbc/recipes/*.yaml``
(:mod:`ftbc.recipes`); the batches come from :mod:`ftbc.loaders`.

Outputs of one run in ``out/``:

- ``model.safetensors`` + ``model.json``: the weights and their metadata (the
  resolved configuration, per-epoch metrics, test / holdout accuracy, the
  learned QCFS lambdas or the clip levels, versions, git commit, sha256);
- ``run.yaml``: the resolved arguments, enough to rerun the same training;
- while the run is going: ``last.json`` + ``last-epochNNNN.safetensors``,
  the state after the latest epoch (:mod:`ftbc.resume`). The same command
  started again continues from it; they are removed when the run finishes.

Speed on a GPU: bf16 autocast (``amp``, on by default on CUDA), channels-last
weights and inputs, cuDNN autotuning, and for CIFAR the training set held on
the GPU with crop / flip / Cutout done there (:mod:`ftbc.batches`). Several
GPUs or hosts: ``torchrun`` (:mod:`ftbc.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import timm
import torch
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from ftbc.data import datasets as ftbc_data
from ftbc.data import distributed as ftbc_dist
from ftbc import models as ftbc_models
from ftbc.train import resume as ftbc_resume
from ftbc._io import load_checkpoint, save_checkpoint, write_text
from ftbc.data.batches import TensorBatches, in_memory_uint8, random_crop_flip  # noqa: F401  (public here before)
from ftbc.data.distributed import DistEnv
from ftbc.errors import CheckpointError, TrainingError
from ftbc.data.loaders import EVAL_BATCH_SIZE, build_loaders  # noqa: F401  (public here before)
from ftbc.train.recipes import load_recipe, validate_recipe

ACTS = ("relu", "qcfs", "clip")
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
DEFAULT_L = 4  # no release value (QCFS's CIFAR setting)
DEFAULT_INIT_LAMBDA = 8.0
CHECKPOINT_NAME = "model.safetensors"


# ---------------------------------------------------------------- optimisation


def create_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """SGD from timm's factory: ``opt='momentum'`` is plain heavy-ball SGD (the releases'), 'sgd' is Nesterov.

    Weight decay: with the recipe's ``decay_all_parameters`` (the release
    recipes) it covers every parameter, as the releases' ``SGD(model.parameters(),
    weight_decay=...)`` does, so biases, BN and QCFS's ``lam`` shrink too, which
    moves the learned lambdas and with them the conversion gap. Without it,
    timm's rule leaves parameters with ndim <= 1 undecayed. The checkpoint's
    ``weight_decay_excludes`` records which.
    """
    return create_optimizer_v2(model, opt=recipe["opt"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                               momentum=recipe["momentum"],
                               filter_bias_and_bn=not recipe.get("decay_all_parameters", False))


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


_NO_STEP = 2**62  # "no non-finite loss yet"


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable, device, *, desc: str = "train", progress: bool = True, amp: bool = False,
                    epoch: int = 1, env: DistEnv = DistEnv(), check_every: int | None = None) -> dict[str, float]:
    """One pass over ``loader`` with SGD steps; returns ``{'loss': mean, 'acc': top-1 %}`` on the training batches.

    ``amp``: bf16 autocast for the forward pass and the loss (the weights and
    the optimiser stay float32; bf16 needs no loss scaling). A non-finite loss
    raises :class:`TrainingError` naming ``epoch`` and the step (1-based).
    The test waits for the device only every ``check_every`` steps (default:
    every step on CPU, where it is free, so no update is made with a bad loss;
    every 50 on a GPU); steps in between are tracked on the device and the
    first bad one is reported. Under ``torchrun`` the ranks test together and
    the metrics are summed over them.
    """
    model.train()
    device = torch.device(device)
    check_every = check_every or (1 if device.type == "cpu" else 50)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), _NO_STEP, dtype=torch.int64, device=device)
    bad_loss = torch.zeros((), dtype=torch.float32, device=device)
    n_steps = len(loader) if hasattr(loader, "__len__") else None
    bar = _bar(loader, desc, progress)
    for step, (x, y) in enumerate(bar):
        fmt = torch.channels_last if x.dim() == 4 else torch.preserve_format  # the weights' layout
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = criterion(out, y)
        new_bad = ~torch.isfinite(loss.detach()) & (first_bad == _NO_STEP)
        bad_loss = torch.where(new_bad, loss.detach().float(), bad_loss)
        first_bad = torch.where(new_bad, step, first_bad)
        if (step + 1) % check_every == 0:
            _raise_if_not_finite(first_bad, bad_loss, epoch, n_steps, env)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / seen.item():.3f}", acc=f"{100 * correct.item() / seen.item():.1f}")
    bar.close()
    _raise_if_not_finite(first_bad, bad_loss, epoch, n_steps, env)
    if env.enabled:
        totals = torch.stack([loss_sum, correct.double(), seen.double()])
        torch.distributed.all_reduce(totals)
        loss_sum, correct, seen = totals[0], totals[1], totals[2]
    n = max(float(seen.item()), 1.0)
    return {"loss": loss_sum.item() / n, "acc": 100.0 * correct.item() / n}


def _raise_if_not_finite(first_bad: torch.Tensor, bad_loss: torch.Tensor, epoch: int, n_steps: int | None,
                         env: DistEnv) -> None:
    step = int(ftbc_dist.all_reduce_min(first_bad.clone(), env).item())
    if step == _NO_STEP:
        return
    value = f"{bad_loss.item()}" if int(first_bad.item()) == step else "not finite"
    of = f" of {n_steps}" if n_steps else ""
    raise TrainingError(f"training diverged: the loss is {value} at epoch {epoch}, step {step + 1}{of} "
                        f"(try a lower --lr; this epoch was not saved)")


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


def qcfs_levels(dataset: str, arch: str | None = None) -> int:
    """QCFS's L for ``dataset`` and model ``arch`` from :data:`QCFS_L` (:data:`DEFAULT_L` where it has none)."""
    name = ftbc_data.dataset_info(dataset).name
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
    if act not in ACTS:
        raise TrainingError(f"unknown activation {act!r} (choose from {', '.join(ACTS)})")
    given = {"--L": L, "--init-lambda": init_lambda, "--y-th": y_th}
    allowed = {"relu": (), "qcfs": ("--L", "--init-lambda"), "clip": ("--y-th",)}[act]
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
          progress: bool = True, log=functools.partial(print, flush=True), amp: bool | None = None,
          sync_bn: bool = False, time_budget_s: float | None = None, restart: bool = False,
          init_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``arch`` with activation ``act`` on ``dataset`` by ``recipe``; write the checkpoint to ``out``.

    Seeds ``torch.manual_seed(seed)`` before building the model, and a training
    generator (shuffling, batched augmentation) from the same seed: two CPU
    runs with the same arguments and thread count give bit-identical weights,
    and so does a run killed and started again (it resumes from ``out``'s
    per-epoch state unless ``restart``). On CUDA, ``deterministic=True`` also
    asks for deterministic kernels.

    Args:
        amp: bf16 autocast; None means on for CUDA, off for CPU.
        sync_bn: under torchrun, BatchNorm statistics of the global batch.
        time_budget_s: size the number of epochs from the first epoch's time
            so that training takes about this long (the recipe's epochs stay
            the cap; fewer if later epochs run slower); the schedule is laid
            over the chosen number, which ``model.json`` records.
        restart: ignore and delete a saved per-epoch state in ``out``.
        init_from: initial weights (a safetensors file of a torchvision
            network, see :mod:`ftbc.pretrained`, or a suite checkpoint).

    Returns the metrics: ``train_loss``, ``train_acc``, ``lr`` and
    ``epoch_time_s`` per epoch, ``test_acc``, ``holdout_acc`` (None without a
    holdout), ``wall_time_s`` and ``cpu_time_s`` (process CPU time, all threads).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = apply_overrides(load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe, epochs=epochs)
    info = ftbc_data.dataset_info(dataset)  # DataError (a UserError) for an unknown name
    act_kwargs = {**resolve_act_kwargs(act, info.name, arch=arch), **(act_kwargs or {})}  # record the defaults too
    if time_budget_s is not None and not time_budget_s > 0:
        raise TrainingError(f"--time-budget must be > 0 seconds, got {time_budget_s}")
    dataset, out = info.name, Path(out)
    run_key = dict(dataset=dataset, arch=arch, act=act, act_kwargs=act_kwargs, seed=seed, holdout=holdout,
                   holdout_seed=holdout_seed, recipe={k: v for k, v in recipe.items()
                                                      if k not in ("name", "path", "overrides")})
    with ftbc_dist.process_group(_check_device(device)) as (env, dev), _deterministic(deterministic):
        amp = dev.type == "cuda" if amp is None else amp
        log = log if env.is_main else (lambda *a, **k: None)
        if dev.type == "cuda" and not deterministic:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.manual_seed(seed)
        # channels_last: oneDNN's convolutions are ~25 % faster so on CPU (cuDNN's too on GPU); the model
        # returns to the default layout before the final evaluation and the checkpoint.
        model = _build_model(arch, act, act_kwargs, info.num_classes)
        if init_from is not None:
            from ftbc.models.pretrained import load_initial_weights

            load_initial_weights(model, arch, init_from)
        model = model.to(dev, memory_format=torch.channels_last)
        loaders = build_loaders(dataset, data_root, recipe, seed=seed, holdout=holdout, holdout_seed=holdout_seed,
                                num_workers=num_workers, download=download, device=dev, env=env)
        if restart and env.is_main:
            ftbc_resume.remove_state(out)
        ftbc_dist.barrier(env)
        ddp = ftbc_dist.wrap_model(model, env, dev, sync_bn=sync_bn)
        metrics = fit(ddp, loaders["train"], recipe, dev, progress=progress, log=log, amp=amp, out=out,
                      run_key=run_key, data_generator=loaders["generator"], time_budget_s=time_budget_s, env=env,
                      seed=seed)
        recipe = {**recipe, "epochs": len(metrics["train_loss"])}
        if env.is_main:
            model = ftbc_dist.unwrap(ddp).to(memory_format=torch.contiguous_format)  # the layout load_model() rebuilds
            metrics["test_acc"] = evaluate(model, loaders["test"], dev, desc="test", progress=progress)
            metrics["holdout_acc"] = (None if loaders["holdout"] is None else
                                      evaluate(model, loaders["holdout"], dev, desc="holdout", progress=progress))
            metrics["wall_time_s"] = time.perf_counter() - t0
            metrics["cpu_time_s"] = time.process_time() - c0  # all threads; tells a busy machine from a slow run
            config = dict(dataset=dataset, data_root=str(data_root), arch=arch, act=act, act_kwargs=act_kwargs,
                          num_classes=info.num_classes, image_size=info.image_size, mean=list(info.mean),
                          std=list(info.std), recipe=recipe, seed=seed, epochs=recipe["epochs"], holdout=holdout,
                          holdout_seed=holdout_seed, device=str(dev), deterministic=deterministic,
                          num_workers=num_workers, pipeline=loaders["pipeline"], n_train=loaders["n_train"],
                          out=str(out), amp=amp, world_size=env.world_size, sync_bn=sync_bn,
                          time_budget_s=time_budget_s, init_from=None if init_from is None else str(init_from))
            _write_outputs(model, out, config, metrics)
            ftbc_resume.remove_state(out)
        ftbc_dist.barrier(env)
    return metrics


def fit(model: nn.Module, loader: Iterable, recipe: dict, device, *, progress: bool = True, log=print,
        amp: bool = False, out: Path | None = None, run_key: dict | None = None,
        data_generator: torch.Generator | None = None, time_budget_s: float | None = None,
        env: DistEnv = DistEnv(), seed: int = 0) -> dict[str, list[float]]:
    """Run the recipe's epochs over ``loader``: optimiser, schedule and loss from ``recipe``.

    With ``out``, the state after each epoch is saved there (rank 0) and a
    state already there with the same ``run_key`` is resumed (see
    :mod:`ftbc.resume`). With ``time_budget_s`` the number of epochs is set
    after the first one (at most the recipe's) and lowered later if epochs
    get slower (see :func:`_resize_for_budget`). Returns per-epoch
    ``train_loss``, ``train_acc`` (%), ``lr`` and ``epoch_time_s``; raises
    :class:`TrainingError` if the loss stops being finite.
    """
    n_epochs = recipe["epochs"]
    optimizer = create_optimizer(model, recipe)
    scheduler = create_scheduler(optimizer, recipe, n_epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    metrics: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "lr": [], "epoch_time_s": []}
    epoch = 0
    state = ftbc_resume.load_state(out, run_key or {}) if out is not None else None
    if state is not None:
        n_epochs, epoch = state.epochs, state.epoch
        scheduler = create_scheduler(optimizer, recipe, n_epochs)
        ftbc_resume.restore(state, model=ftbc_dist.unwrap(model), optimizer=optimizer, scheduler=scheduler,
                            data_generator=data_generator)
        metrics = {k: list(state.meta["metrics"][k]) for k in metrics}
        log(f"resuming {out} after epoch {epoch}/{n_epochs}")
    while epoch < n_epochs:
        if env.enabled:  # per-rank dropout / per-sample draws that a resumed run repeats exactly
            torch.manual_seed((seed * 1_000_003 + epoch * 1009 + env.rank) % 2**63)
        te = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, criterion, optimizer, loader, device, desc=f"epoch {epoch + 1}/{n_epochs}",
                                progress=progress, amp=amp, epoch=epoch + 1, env=env)
        epoch_s = time.perf_counter() - te
        if time_budget_s is not None:
            n_new = _resize_for_budget(metrics["epoch_time_s"] + [epoch_s], time_budget_s, n_epochs, epoch,
                                       recipe, env, device, log)
            if n_new != n_epochs:
                n_epochs, scheduler = n_new, create_scheduler(optimizer, recipe, n_new)
        epoch += 1
        scheduler.step(epoch)
        for k, v in (("train_loss", stats["loss"]), ("train_acc", stats["acc"]), ("lr", lr), ("epoch_time_s", epoch_s)):
            metrics[k].append(v)
        if out is not None and env.is_main:
            ftbc_resume.save_state(out, model=ftbc_dist.unwrap(model), optimizer=optimizer, scheduler=scheduler,
                                   data_generator=data_generator, epoch=epoch, epochs=n_epochs,
                                   run_key=run_key or {}, metrics=metrics)
        log(f"epoch {epoch}/{n_epochs}  loss {stats['loss']:.4f}  train acc {stats['acc']:.2f}%  "
            f"lr {lr:.4g}  {epoch_s:.1f}s")
    return metrics


def _epochs_in_budget(epoch_s: float, budget_s: float, cap: int) -> int:
    """Whole epochs of length ``epoch_s`` that fit ``budget_s`` (the first included), in [1, cap]."""
    return max(1, min(cap, int(budget_s // max(epoch_s, 1e-9))))


def _resize_for_budget(times: list[float], budget_s: float, n_epochs: int, epoch: int, recipe: dict,
                       env: DistEnv, device, log) -> int:
    """The number of epochs after epoch ``epoch`` (0-based) of a ``time_budget_s`` run; rank 0 decides.

    After the first epoch: as many as fit at its length, at most the recipe's.
    Later, only fewer, when the mean epoch so far says the plan overruns the
    budget by more than 10 % (a machine that got busier); the schedule is then
    laid over the new number, which can never be below the epochs done.
    """
    mean = sum(times) / len(times)
    if epoch == 0:
        n = _epochs_in_budget(times[0], budget_s, n_epochs)
    elif mean * n_epochs > 1.1 * budget_s:
        n = max(epoch + 1, _epochs_in_budget(mean, budget_s, n_epochs))
    else:
        n = n_epochs
    n = ftbc_dist.broadcast_int(n, env, torch.device(device))
    if epoch == 0 or n != n_epochs:
        log(f"epoch {epoch + 1} took {times[-1]:.1f}s: {n} epochs fit the {budget_s:.0f}s budget "
            f"(recipe cap {recipe['epochs']})")
    return n


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
        "weight_decay_excludes": ("nothing (every parameter decays, as the releases)"
                                  if config["recipe"].get("decay_all_parameters") else
                                  "parameters with ndim <= 1 (biases, BN, QCFS lambda): timm filter_bias_and_bn"),
        "torch_version": torch.__version__, "timm_version": timm.__version__, "python": sys.version.split()[0],
        "num_threads": torch.get_num_threads(), "git_commit": git_commit(),
    }
    save_checkpoint(out / CHECKPOINT_NAME, model.state_dict(), meta)
    write_text(out / "run.yaml", yaml.safe_dump(config, sort_keys=False))


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


# ---------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe.",
                                add_help=add_help)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet (default cifar10)")
    g.add_argument("--data-root", default="auto",
                   help="dataset folder or .tar.gz; 'auto' (default) finds the CIFAR-10 copy (docs/data.md)")
    g.add_argument("--download", action="store_true", help="download the dataset if torchvision can")
    g.add_argument("--holdout", type=int, default=0, help="training images held out of training (default 0)")
    g.add_argument("--holdout-seed", type=int, default=0, help="seed of the holdout split (default 0)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers for per-sample pipelines (default 0)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", required=True, help="model name (ftbc.models.list_models())")
    g.add_argument("--act", default="relu", choices=ACTS, help="activation (default relu)")
    g.add_argument("--L", type=int, default=None,
                   help="QCFS quantisation steps (default by dataset and arch: 4 CIFAR, 8 ImageNet ResNet-34, "
                        "16 ImageNet VGG-16)")
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
    g.add_argument("--quiet", action="store_true", help="no progress bars (the per-epoch lines stay)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off for CPU)")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="fit the number of epochs (at most the recipe's) to this time, measured on epoch 1")
    g.add_argument("--restart", action="store_true",
                   help="discard the per-epoch state in --out instead of resuming from it")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm over the global batch")
    g.add_argument("--init-from", default=None, metavar="FILE",
                   help="initial weights: torchvision VGG-16 weights as safetensors (see ftbc.pretrained)")
    return p


def main(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise TrainingError(f"--workers must be >= 0, got {args.workers}")
    if args.holdout < 0:
        raise TrainingError(f"--holdout must be >= 0, got {args.holdout}")
    recipe = apply_overrides(load_recipe(args.recipe), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    act_kwargs = resolve_act_kwargs(args.act, args.dataset, arch=args.arch, L=args.L, init_lambda=args.init_lambda,
                                    y_th=args.y_th)
    from ftbc.data.prepare import resolve_data_root

    data_root = resolve_data_root(args.dataset, args.data_root, download=args.download)
    metrics = train(dataset=args.dataset, data_root=data_root, arch=args.arch, act=args.act,
                    act_kwargs=act_kwargs, recipe=recipe, seed=args.seed, out=args.out, device=args.device,
                    num_workers=args.workers, download=args.download, holdout=args.holdout,
                    holdout_seed=args.holdout_seed, deterministic=args.deterministic, progress=not args.quiet,
                    amp=args.amp, sync_bn=args.sync_bn, time_budget_s=args.time_budget, restart=args.restart,
                    init_from=args.init_from)
    if "test_acc" not in metrics:  # a torchrun rank other than 0: rank 0 evaluates and reports
        return 0
    hold = "" if metrics["holdout_acc"] is None else f", holdout {metrics['holdout_acc']:.2f}%"
    print(f"test accuracy {metrics['test_acc']:.2f}%{hold} in {metrics['wall_time_s']:.0f}s "
          f"-> {Path(args.out) / CHECKPOINT_NAME}")
    return 0
