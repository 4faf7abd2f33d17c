"""Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe and evaluate it.

Plain functions in the style of torchvision's ``references/classification``:
:func:`fit`, :func:`train`, then the CLI's :func:`get_args_parser` and :func:`main`,
on :func:`ftbc.train.loop.train_one_epoch` and :func:`ftbc.train.loop.evaluate`;
reloading a trained ANN is :func:`ftbc.models.checkpoint.load_model`. Recipes (optimiser,
schedule, augmentation) are data in ``ftbc/recipes/*.yaml``
(:mod:`ftbc.train.recipes`); the batches come from :mod:`ftbc.data.loaders`.

Outputs of one run in ``out/``:

- ``model.safetensors`` + ``model.json``: the weights and their metadata (the
  resolved configuration, per-epoch metrics, test / holdout accuracy, the
  learned QCFS lambdas or the clip levels, versions, git commit, sha256);
- ``run.yaml``: the resolved arguments, enough to rerun the same training;
- while the run is going: ``last.json`` + ``last-epochNNNN.safetensors``,
  the state after the latest epoch (:mod:`ftbc.train.resume`). The same command
  started again continues from it; they are removed when the run finishes.

Speed on a GPU: bf16 autocast (``amp``, on by default on CUDA), channels-last
weights and inputs, cuDNN autotuning, and for CIFAR the training set held on
the GPU with crop / flip / Cutout done there (:mod:`ftbc.data.batches`). Several
GPUs or hosts: ``torchrun`` (:mod:`ftbc.data.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import timm
import torch
import yaml
from torch import nn

from ftbc._io import git_commit, save_checkpoint, write_text
from ftbc.data.catalog import DATASET_NAMES_TEXT, DatasetInfo, dataset_info
from ftbc.data import distributed as ftbc_dist
from ftbc.data.distributed import DistEnv
from ftbc.data.loaders import build_loaders
from ftbc.errors import TrainingError
from ftbc.models.activations import ACTIVATIONS
from ftbc.models.checkpoint import (CHECKPOINT_NAME, DEFAULT_INIT_LAMBDA, QCFS_L_HELP, Y_TH_HELP, _build_model,
                                    _check_device, activation_values, resolve_act_kwargs)
from ftbc.train import resume as ftbc_resume
from ftbc.train.time_budget import resize_for_budget
from ftbc.train.loop import create_optimizer, create_scheduler, evaluate, train_one_epoch
from ftbc.train.recipes import load_recipe, validate_recipe


# ---------------------------------------------------------------- run


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
            network, see :mod:`ftbc.models.pretrained`, or a suite checkpoint).

    Returns the metrics: ``train_loss``, ``train_acc``, ``lr`` and
    ``epoch_time_s`` per epoch, ``test_acc``, ``holdout_acc`` (None without a
    holdout), ``wall_time_s`` and ``cpu_time_s`` (process CPU time, all threads).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = apply_overrides(load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe, epochs=epochs)
    info = dataset_info(dataset)  # DataError (a UserError) for an unknown name
    act_kwargs = {**resolve_act_kwargs(act, info.name, arch=arch), **(act_kwargs or {})}  # record the defaults too
    if time_budget_s is not None and not time_budget_s > 0:
        raise TrainingError(f"--time-budget must be > 0 seconds, got {time_budget_s}")
    run = _Run(info=info, data_root=data_root, arch=arch, act=act, act_kwargs=act_kwargs, recipe=recipe, seed=seed,
               out=Path(out), num_workers=num_workers, download=download, holdout=holdout, holdout_seed=holdout_seed,
               deterministic=deterministic, progress=progress, sync_bn=sync_bn, time_budget_s=time_budget_s,
               restart=restart, init_from=init_from)
    with ftbc_dist.process_group(_check_device(device)) as (env, dev), _deterministic(deterministic):
        amp = dev.type == "cuda" if amp is None else amp
        log = log if env.is_main else (lambda *a, **k: None)
        return _train_in_group(run, env, dev, amp=amp, log=log, started=(t0, c0))


@dataclass(frozen=True)
class _Run:
    """The resolved arguments of one :func:`train` call, which its steps and its records share."""

    info: DatasetInfo
    data_root: str | os.PathLike
    arch: str
    act: str
    act_kwargs: dict
    recipe: dict
    seed: int
    out: Path
    num_workers: int
    download: bool
    holdout: int
    holdout_seed: int
    deterministic: bool
    progress: bool
    sync_bn: bool
    time_budget_s: float | None
    restart: bool
    init_from: str | os.PathLike | None

    def run_key(self) -> dict[str, Any]:
        """What a saved per-epoch state must have been trained with to be resumed (:mod:`ftbc.train.resume`)."""
        return dict(dataset=self.info.name, arch=self.arch, act=self.act, act_kwargs=self.act_kwargs, seed=self.seed,
                    holdout=self.holdout, holdout_seed=self.holdout_seed,
                    recipe={k: v for k, v in self.recipe.items() if k not in ("name", "path", "overrides")})

    def config(self, recipe: dict, dev: torch.device, amp: bool, env: DistEnv, loaders: dict) -> dict[str, Any]:
        """What ``run.yaml`` and ``model.json`` record: the arguments, and the recipe and machine as they ran."""
        info = self.info
        return dict(dataset=info.name, data_root=str(self.data_root), arch=self.arch, act=self.act,
                    act_kwargs=self.act_kwargs, num_classes=info.num_classes, image_size=info.image_size,
                    mean=list(info.mean), std=list(info.std), recipe=recipe, seed=self.seed, epochs=recipe["epochs"],
                    holdout=self.holdout, holdout_seed=self.holdout_seed, device=str(dev),
                    deterministic=self.deterministic, num_workers=self.num_workers, pipeline=loaders["pipeline"],
                    n_train=loaders["n_train"], out=str(self.out), amp=amp, world_size=env.world_size,
                    sync_bn=self.sync_bn, time_budget_s=self.time_budget_s,
                    init_from=None if self.init_from is None else str(self.init_from))


def _train_in_group(run: _Run, env: DistEnv, dev: torch.device, *, amp: bool, log,
                    started: tuple[float, float]) -> dict[str, Any]:
    """Build, train and (rank 0) evaluate and save ``run`` on ``dev``, inside the process group."""
    if dev.type == "cuda" and not run.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    model = _seeded_model(run, dev)
    loaders = build_loaders(run.info.name, run.data_root, run.recipe, seed=run.seed, holdout=run.holdout,
                            holdout_seed=run.holdout_seed, num_workers=run.num_workers, download=run.download,
                            device=dev, env=env)
    if run.restart and env.is_main:
        ftbc_resume.remove_state(run.out)
    ftbc_dist.barrier(env)
    ddp = ftbc_dist.wrap_model(model, env, dev, sync_bn=run.sync_bn)
    metrics = fit(ddp, loaders["train"], run.recipe, dev, progress=run.progress, log=log, amp=amp, out=run.out,
                  run_key=run.run_key(), data_generator=loaders["generator"], time_budget_s=run.time_budget_s,
                  env=env, seed=run.seed)
    recipe = {**run.recipe, "epochs": len(metrics["train_loss"])}
    if env.is_main:
        model = ftbc_dist.unwrap(ddp).to(memory_format=torch.contiguous_format)  # the layout load_model() rebuilds
        metrics.update(_final_metrics(model, loaders, dev, progress=run.progress, started=started))
        _write_outputs(model, run.out, run.config(recipe, dev, amp, env, loaders), metrics)
        ftbc_resume.remove_state(run.out)
    ftbc_dist.barrier(env)
    return metrics


def _seeded_model(run: _Run, dev: torch.device) -> nn.Module:
    """The model from ``torch.manual_seed(run.seed)`` (or ``run.init_from``'s weights), channels-last on ``dev``.

    channels_last: oneDNN's convolutions are ~25 % faster so on CPU (cuDNN's too on GPU); the model
    returns to the default layout before the final evaluation and the checkpoint.
    """
    torch.manual_seed(run.seed)
    model = _build_model(run.arch, run.act, run.act_kwargs, run.info.num_classes)
    if run.init_from is not None:
        from ftbc.models.pretrained import load_initial_weights

        load_initial_weights(model, run.arch, run.init_from)
    return model.to(dev, memory_format=torch.channels_last)


def _final_metrics(model: nn.Module, loaders: dict, dev: torch.device, *, progress: bool,
                   started: tuple[float, float]) -> dict[str, Any]:
    """Test and holdout accuracy of the trained model, then the run's wall and CPU time since ``started``."""
    out = {"test_acc": evaluate(model, loaders["test"], dev, desc="test", progress=progress)}
    out["holdout_acc"] = (None if loaders["holdout"] is None else
                          evaluate(model, loaders["holdout"], dev, desc="holdout", progress=progress))
    out["wall_time_s"] = time.perf_counter() - started[0]
    out["cpu_time_s"] = time.process_time() - started[1]  # all threads; tells a busy machine from a slow run
    return out


def fit(model: nn.Module, loader: Iterable, recipe: dict, device, *, progress: bool = True, log=print,
        amp: bool = False, out: Path | None = None, run_key: dict | None = None,
        data_generator: torch.Generator | None = None, time_budget_s: float | None = None,
        env: DistEnv = DistEnv(), seed: int = 0) -> dict[str, list[float]]:
    """Run the recipe's epochs over ``loader``: optimiser, schedule and loss from ``recipe``.

    With ``out``, the state after each epoch is saved there (rank 0) and a
    state already there with the same ``run_key`` is resumed (see
    :mod:`ftbc.train.resume`). With ``time_budget_s`` the number of epochs is set
    after the first one (at most the recipe's) and lowered later if epochs
    get slower (see :func:`ftbc.train.time_budget.resize_for_budget`). Returns per-epoch
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
            n_new = resize_for_budget(metrics["epoch_time_s"] + [epoch_s], time_budget_s, n_epochs, epoch,
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


# ---------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train an ANN (ReLU, QCFS or clipped ReLU) from a recipe.",
                                add_help=add_help)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", help=f"{DATASET_NAMES_TEXT}")
    g.add_argument("--data-root", default="auto",
                   help="dataset folder or .tar.gz; 'auto' (default) finds the CIFAR-10 copy (docs/data.md)")
    g.add_argument("--download", action="store_true", help="download the dataset if torchvision can")
    g.add_argument("--holdout", type=int, default=0, help="training images held out of training (default 0)")
    g.add_argument("--holdout-seed", type=int, default=0, help="seed of the holdout split (default 0)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers for per-sample pipelines (default 0)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", required=True, help="model name (ftbc.models.list_models())")
    g.add_argument("--act", default="relu", choices=ACTIVATIONS, help="activation")
    g.add_argument("--L", type=int, default=None,
                   help=f"QCFS quantisation steps (default by dataset and arch: {QCFS_L_HELP})")
    g.add_argument("--init-lambda", type=float, default=None,
                   help=f"QCFS initial lambda (default {DEFAULT_INIT_LAMBDA})")
    g.add_argument("--y-th", type=float, default=None,
                   help=f"clip level of --act clip (default {Y_TH_HELP})")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default="quick_cpu", help="recipe name or YAML path")
    g.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    g.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    g.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (model.safetensors, model.json, run.yaml)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
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
                   help="initial weights: torchvision VGG-16 weights as safetensors (see ftbc.models.pretrained)")
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
