"""The optimisation pieces of ``ftbc train``: optimiser and schedule from a recipe, one epoch,
and the test-accuracy loop (torchvision ``references/classification`` style)."""

from __future__ import annotations

import sys
from typing import Iterable

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from ftbc.data import distributed as ftbc_dist
from ftbc.data.distributed import DistEnv
from ftbc.errors import TrainingError

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
