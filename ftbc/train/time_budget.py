"""How many epochs a ``--time-budget`` run trains: sized from the first epoch, lowered if later ones run slower.

The recipe's epochs stay the cap; :func:`ftbc.train.training.fit` lays the schedule over the
number decided here, and every rank follows rank 0's decision.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ftbc.data import distributed as ftbc_dist
from ftbc.data.distributed import DistEnv


def epochs_in_budget(epoch_s: float, budget_s: float, cap: int) -> int:
    """Whole epochs of length ``epoch_s`` that fit ``budget_s`` (the first included), in [1, cap]."""
    return max(1, min(cap, int(budget_s // max(epoch_s, 1e-9))))


def resize_for_budget(times: list[float], budget_s: float, n_epochs: int, epoch: int, recipe: dict,
                      env: DistEnv, device: torch.device | str, log: Callable[..., Any]) -> int:
    """The number of epochs after epoch ``epoch`` (0-based) of a ``time_budget_s`` run; rank 0 decides.

    After the first epoch: as many as fit at its length, at most the recipe's.
    Later, only fewer, when the mean epoch so far says the plan overruns the
    budget by more than 10 % (a machine that got busier); the schedule is then
    laid over the new number, which can never be below the epochs done.
    """
    mean = sum(times) / len(times)
    if epoch == 0:
        n = epochs_in_budget(times[0], budget_s, n_epochs)
    elif mean * n_epochs > 1.1 * budget_s:
        n = max(epoch + 1, epochs_in_budget(mean, budget_s, n_epochs))
    else:
        n = n_epochs
    n = ftbc_dist.broadcast_int(n, env, torch.device(device))
    if epoch == 0 or n != n_epochs:
        log(f"epoch {epoch + 1} took {times[-1]:.1f}s: {n} epochs fit the {budget_s:.0f}s budget "
            f"(recipe cap {recipe['epochs']})")
    return n
