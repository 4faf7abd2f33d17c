"""Seeded index draws and calibration batches.

Calibration and hold-out draws use their own seeded ``torch.Generator``, so they do not
depend on the global RNG, the device or the number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from ftbc.errors import DataError

__all__ = ["calibration_indices", "holdout_split", "calibration_batches"]


def calibration_indices(n_total: int, n: int, *, seed: int, exclude: Sequence[int] | None = None) -> list[int]:
    """Draw ``n`` distinct indices of ``range(n_total)`` that are not in ``exclude``.

    One permutation from a ``torch.Generator`` seeded with ``seed``: the draw depends on
    nothing else (not the global RNG, device or worker count). Excluded indices are skipped
    without reordering the rest, so a hold-out changes the draw only where it must.
    """
    if n < 0 or n_total < 0:
        raise ValueError(f"n and n_total must be >= 0, got n={n}, n_total={n_total}")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    if exclude is not None and len(exclude):
        drop = torch.as_tensor(list(exclude), dtype=torch.int64)
        if drop.min() < 0 or drop.max() >= n_total:
            raise ValueError(f"exclude holds indices outside [0, {n_total})")
        keep = torch.ones(n_total, dtype=torch.bool)
        keep[drop] = False
        perm = perm[keep[perm]]
    if n > len(perm):
        raise DataError(f"calibration needs {n} images but only {len(perm)} of {n_total} are available "
                        f"after exclusions: use fewer or smaller calibration batches, or a smaller hold-out")
    return perm[:n].tolist()


def holdout_split(n_total: int, holdout: int, *, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n_total)`` into (train, hold-out) index lists, each sorted, disjoint, seeded."""
    if not 0 <= holdout < n_total:
        raise DataError(f"hold-out of {holdout} images does not fit a training split of {n_total}: "
                        f"choose 0 <= holdout < {n_total}")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[holdout:].tolist()), sorted(perm[:holdout].tolist())


def calibration_batches(dataset: Dataset, *, n_batches: int, batch_size: int, seed: int,
                        exclude: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Draw a fixed list of input batches for threshold observation and calibration.

    Pass the training split with the test-time transform (pass the hold-out indices as
    ``exclude``). A random transform works too: items are built under a forked RNG seeded
    with ``seed``, so the same call always returns the same batches.

    Returns:
        ``n_batches`` float tensors ``[batch_size, 3, H, W]``.
    """
    idx = calibration_indices(len(dataset), n_batches * batch_size, seed=seed, exclude=exclude)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = [dataset[i][0] for i in idx]
    if images and not (isinstance(images[0], torch.Tensor) and images[0].is_floating_point()):
        raise TypeError("calibration_batches needs float image tensors: give the dataset a transform, "
                        "e.g. build_transform(name, train=False)")
    return [torch.stack(images[k * batch_size:(k + 1) * batch_size]) for k in range(n_batches)]
