"""Training, test and holdout batches for a recipe: in-memory on the device, or per-sample loaders.

Two pipelines, chosen by :func:`build_loaders`:

- ``batched``: an in-memory uint8 dataset (CIFAR) whose recipe has no
  AutoAugment. The training set is moved to the training device once and
  augmented there as tensors (crop, flip, Cutout; :mod:`ftbc.data.batches`), so a
  GPU epoch is not bound by data loading.
- ``per-sample``: everything else (AutoAugment, ImageNet folders): the data
  module's ``transforms.v2`` in a ``DataLoader`` with ``--workers`` processes.

Both draw order and augmentation from one seeded generator (returned as
``generator``, saved in the per-epoch training state) and, under
``torchrun``, give each rank its shard of the same global batches.
:func:`make_loader` is the plain seeded ``DataLoader`` the evaluation sets use.
"""

from __future__ import annotations

import copy
import functools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ftbc.data.batches import TensorBatches, in_memory_uint8
from ftbc.data.catalog import dataset_info
from ftbc.data.distributed import DistEnv, ShardedBatchSampler, seed_worker
from ftbc.data.draws import holdout_split
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc.errors import TrainingError

__all__ = ["EVAL_BATCH_SIZE", "build_loaders", "make_loader"]

EVAL_BATCH_SIZE = 500


def build_loaders(dataset: str, data_root, recipe: dict, *, seed: int, holdout: int = 0, holdout_seed: int = 0,
                  num_workers: int = 0, download: bool = False, device="cpu",
                  env: DistEnv = DistEnv()) -> dict[str, Any]:
    """Training, test and (if ``holdout``) holdout batches for a recipe.

    Returns a dict with ``train``, ``test``, ``holdout`` (None without one),
    ``info`` (the DatasetInfo), ``pipeline`` ('batched' or 'per-sample'),
    ``n_train`` and ``generator`` (the training stream's RNG). The holdout is
    ``holdout`` training images (chosen by ``holdout_split(seed=holdout_seed)``)
    left out of training and evaluated without augmentation. Test and holdout
    batches are whole (every rank may evaluate them; the trainer uses rank 0).
    """
    info = dataset_info(dataset)
    aug = recipe["augmentation"]
    if recipe["batch_size"] % env.world_size:
        raise TrainingError(f"the batch size {recipe['batch_size']} is the global batch and must be divisible "
                            f"by the {env.world_size} processes")
    g = torch.Generator().manual_seed(seed)
    raw_train = load_split(dataset, data_root, "train", download=download)
    raw_test = load_split(dataset, data_root, "test", download=download)
    train_idx = holdout_idx = None
    if holdout:
        if not 0 < holdout < len(raw_train):
            raise TrainingError(f"--holdout must be between 1 and {len(raw_train) - 1}, got {holdout}")
        train_idx, holdout_idx = (torch.as_tensor(i, dtype=torch.int64)
                                  for i in holdout_split(len(raw_train), holdout, seed=holdout_seed))
    tensors = None if aug["autoaugment"] else in_memory_uint8(raw_train)
    test_tensors = in_memory_uint8(raw_test) if tensors is not None else None
    if tensors is not None and test_tensors is not None:
        xs, ys = tensors
        common = dict(mean=info.mean, std=info.std, device=device)
        pad = 4 if aug["crop"] else 0
        tr = slice(None) if train_idx is None else train_idx
        loaders = dict(
            train=TensorBatches(xs[tr], ys[tr], batch_size=recipe["batch_size"], shuffle=True, crop_padding=pad,
                                flip=aug["flip"], cutout=aug["cutout"], generator=g, rank=env.rank,
                                world_size=env.world_size, **common),
            test=TensorBatches(*test_tensors, batch_size=EVAL_BATCH_SIZE, **common),
            holdout=None if holdout_idx is None else TensorBatches(
                xs[holdout_idx], ys[holdout_idx], batch_size=EVAL_BATCH_SIZE, **common),
            pipeline="batched", n_train=len(ys[tr]))
    else:
        loaders = _per_sample_loaders(dataset, raw_train, raw_test, recipe, generator=g, train_idx=train_idx,
                                      holdout_idx=holdout_idx, num_workers=num_workers, env=env)
    loaders.update(info=info, generator=g)
    return loaders


def _with_transform(ds, transform):
    """A shallow copy of a loaded dataset with another per-sample ``transform`` (no second scan or decode)."""
    if not hasattr(ds, "transform"):
        raise TrainingError(f"cannot set a transform on a {type(ds).__name__} dataset")
    ds = copy.copy(ds)
    ds.transform = transform
    return ds


def _per_sample_loaders(dataset, raw_train, raw_test, recipe, *, generator: torch.Generator, train_idx,
                        holdout_idx, num_workers: int, env: DistEnv) -> dict[str, Any]:
    """DataLoaders with the data module's per-sample transforms (AutoAugment, ImageNet).

    The training loader's workers are not persistent: each epoch seeds them
    from ``generator``, so a run resumed at an epoch boundary draws the same
    augmentations as one that never stopped.
    """
    aug = recipe["augmentation"]
    if not (aug["crop"] and aug["flip"]):
        raise TrainingError("recipes without crop or flip are supported only for in-memory datasets "
                            "without AutoAugment")
    t_train = build_transform(dataset, train=True, autoaugment=aug["autoaugment"], cutout=aug["cutout"])
    t_eval = build_transform(dataset, train=False)
    train_ds, test_ds = _with_transform(raw_train, t_train), _with_transform(raw_test, t_eval)
    holdout_loader = None
    if holdout_idx is not None:
        train_ds = Subset(train_ds, train_idx.tolist())
        hold_ds = Subset(_with_transform(raw_train, t_eval), holdout_idx.tolist())
        holdout_loader = make_loader(hold_ds, EVAL_BATCH_SIZE, shuffle=False, num_workers=num_workers)
    sampler = ShardedBatchSampler(len(train_ds), recipe["batch_size"], shuffle=True, generator=generator,
                                  rank=env.rank, world_size=env.world_size)
    train = DataLoader(train_ds, batch_sampler=sampler, num_workers=num_workers, generator=generator,
                       worker_init_fn=functools.partial(seed_worker, rank=env.rank) if num_workers else None,
                       pin_memory=torch.cuda.is_available())
    return dict(
        train=train,
        test=make_loader(test_ds, EVAL_BATCH_SIZE, shuffle=False, num_workers=num_workers),
        holdout=holdout_loader, pipeline="per-sample", n_train=len(train_ds))


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs in a worker from the per-worker seed torch already set."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """Build a DataLoader whose order and worker seeds come from ``seed``.

    The shuffle order depends only on ``seed``. Augmentation draws happen in the workers
    (seeded from ``seed`` and the worker id) or, with ``num_workers=0``, from the global torch
    RNG, so augmented pixels do depend on ``num_workers``.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_seed_worker if num_workers > 0 else None,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
