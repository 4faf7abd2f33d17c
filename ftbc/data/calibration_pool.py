"""The training images every calibration step draws from, and how they are transformed.

Every release calibrates (thresholds, SNN Calibration's stages, FTBC) on
batches from its shuffled, augmenting training loader. :class:`CalibrationPool`
is that loader as data:

- **which images**: the training split minus a fixed *reserve*. Held-out
  slices (``--holdout``, for FTBC's per-iteration curve or selection) are taken
  from the reserve only, so a run with and without a held-out slice draws
  exactly the same calibration images, and thresholds and every stage agree
  bit for bit. The reserve is ``min(2,500, 5 %)`` of the split, chosen by a
  fixed seed: the releases draw from all 50,000 CIFAR training images, the
  suite from 47,500 (a choice recorded in every result).
- **which transform**: ``'train'`` (default, the releases' behaviour) applies
  the augmentation that the method's release applies in its training loader
  (:data:`CROP_FLIP`, :data:`SNNC_LOADER`, :data:`QCFS_LOADER` on CIFAR; random
  resized crop + flip on ImageNet); ``'test'`` the deterministic test-time
  transform. The Cutout square lies fully inside the image; the releases'
  square is centred uniformly and clipped at the border.
- **a draw**: ``draw(n_batches, batch_size, seed)`` is what the release's
  ``torch.manual_seed(seed)`` followed by the first ``n_batches`` batches of a
  freshly shuffled loader gives: a seeded permutation of the pool, its first
  ``n_batches * batch_size`` images, augmented under a generator seeded with the
  same seed. The same call always returns the same pixels.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ftbc.data.catalog import dataset_info
from ftbc.data.draws import calibration_batches
from ftbc.data.transforms import build_transform
from ftbc.errors import DataError

TRANSFORMS = ("train", "test")
RESERVE_MAX = 2500
RESERVE_FRACTION = 0.05
RESERVE_SEED = 20240301  # fixed: the reserve must not move with any run's seed

# The calibration loaders of the releases on CIFAR (on ImageNet every release uses random resized
# crop + flip only, whatever it does on CIFAR): RTS crops and flips; SNN Calibration (and FTBC on
# it) adds AutoAugment and a 16-pixel Cutout of black pixels; QCFS (and FTBC on it) adds AutoAugment
# and a 16-pixel Cutout to 0 after normalisation.
CROP_FLIP: Mapping[str, Any] = {"crop": True, "flip": True, "autoaugment": False, "cutout": 0,
                                "cutout_before_normalize": False}
SNNC_LOADER: Mapping[str, Any] = {**CROP_FLIP, "autoaugment": True, "cutout": 16, "cutout_before_normalize": True}
QCFS_LOADER: Mapping[str, Any] = {**CROP_FLIP, "autoaugment": True, "cutout": 16}


def reserve_size(n_total: int) -> int:
    """Images set aside for held-out slices: ``min(2,500, 5 %)`` of the split."""
    return min(RESERVE_MAX, int(n_total * RESERVE_FRACTION))


def split_reserve(n_total: int) -> tuple[list[int], list[int]]:
    """(pool, reserve) index lists of ``range(n_total)``: disjoint, the pool sorted, the reserve in draw order."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(RESERVE_SEED))
    r = reserve_size(n_total)
    return sorted(perm[r:].tolist()), perm[:r].tolist()


def holdout_indices(n_total: int, holdout: int) -> list[int]:
    """The first ``holdout`` images of the reserve (sorted); never in the calibration pool."""
    r = reserve_size(n_total)
    if not 0 <= holdout <= r:
        raise DataError(f"a held-out slice of {holdout} images does not fit the reserve of {r} training images "
                        f"(5 % of the split, at most {RESERVE_MAX}) that calibration never draws from: "
                        f"choose --holdout between 0 and {r}")
    return sorted(split_reserve(n_total)[1][:holdout])


@dataclass
class CalibrationPool:
    """A training split, the indices calibration may draw, and the per-image transform.

    Args:
        dataset: the training split as loaded (items ``(image, label)``); a copy
            with the calibration transform is what ``draw`` reads.
        dataset_name: ``'cifar10'``, ``'cifar100'`` or ``'imagenet'`` (picks the transforms).
        transform_name: ``'train'`` (the release's augmentation) or ``'test'``.
        augmentation: ``{crop, flip, autoaugment, cutout}`` of the method's release,
            used with ``'train'`` (see :meth:`for_method`).
        indices: the pool (default: the split minus the reserve).
    """

    dataset: Dataset
    dataset_name: str
    transform_name: str = "train"
    augmentation: Mapping[str, Any] = field(default_factory=lambda: dict(CROP_FLIP))
    indices: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = split_reserve(len(self.dataset))[0]
        self._images = copy.copy(self.dataset)
        self._images.transform = calibration_transform(self.dataset_name, self.transform_name, self.augmentation)

    def for_method(self, method: Any) -> "CalibrationPool":
        """The same pool with ``method``'s release augmentation (a no-op for the test transform)."""
        aug = dict(getattr(method, "calibration_augmentation", CROP_FLIP))
        return self if aug == dict(self.augmentation) else dataclasses.replace(self, augmentation=aug)

    def __len__(self) -> int:
        return len(self.indices)

    def draw(self, n_batches: int, batch_size: int, seed: int) -> list[Tensor]:
        """``n_batches`` batches of ``batch_size`` distinct pool images, shuffled and transformed by ``seed``."""
        n = n_batches * batch_size
        if n > len(self.indices):
            raise DataError(f"calibration needs {n} images in one draw but the pool holds {len(self.indices)}: "
                            f"use fewer or smaller calibration batches")
        order = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(seed))[:n]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = [self._images[self.indices[i]][0] for i in order.tolist()]
        return [torch.stack(images[k * batch_size:(k + 1) * batch_size]) for k in range(n_batches)]

    def iter_all(self, batch_size: int, seed: int) -> Iterator[Tensor]:
        """Every pool image once, shuffled by ``seed``, in batches (the last one may be smaller),
        transformed one batch at a time: a pass over the release's whole training loader."""
        order = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(seed)).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for k in range(0, len(order), batch_size):
                yield torch.stack([self._images[self.indices[i]][0] for i in order[k:k + batch_size]])

    def describe(self) -> dict[str, Any]:
        """What a result records about its calibration images."""
        aug = self.augmentation if self.transform_name == "train" else None
        return {"calibration_transform": self.transform_name, "calibration_augmentation": aug,
                "calibration_pool": len(self.indices), "training_images": len(self.dataset)}


def calibration_transform(dataset: str, name: str, augmentation: Mapping[str, Any] | None = None):
    """The per-image transform for ``name`` ('train': the release's augmentation, 'test')."""
    if name not in TRANSFORMS:
        raise ValueError(f"calibration transform must be one of {TRANSFORMS}, got {name!r}")
    if name == "test":
        return build_transform(dataset, train=False)
    aug = {**CROP_FLIP, **(augmentation or {})}
    unknown = sorted(set(aug) - set(CROP_FLIP))
    if unknown:
        raise ValueError(f"unknown calibration augmentation key(s) {unknown}; keys: {sorted(CROP_FLIP)}")
    if not (aug["crop"] and aug["flip"]):
        raise ValueError("the training transform always crops and flips; set crop and flip true")
    if dataset_info(dataset).name == "imagenet":
        return build_transform(dataset, train=True)
    return build_transform(dataset, train=True, autoaugment=bool(aug["autoaugment"]), cutout=int(aug["cutout"]),
                           cutout_before_normalize=bool(aug["cutout_before_normalize"]))


def draw_batches(data: Any, n_batches: int | None, batch_size: int, seed: int) -> Iterable[Tensor]:
    """``n_batches`` batches drawn by ``seed`` from ``data``: a :class:`~ftbc.data.calibration_pool.CalibrationPool`,
    a Tensor of images (already transformed) or a training Dataset with a float transform.
    ``n_batches=None``: every image once (a generator for a pool: one batch in memory at a time)."""
    if isinstance(data, CalibrationPool):
        return data.iter_all(batch_size, seed) if n_batches is None else data.draw(n_batches, batch_size, seed)
    if isinstance(data, Tensor):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=g)
        idx = idx if n_batches is None else idx[: n_batches * batch_size]
        return [data[i] for i in idx.split(batch_size)]
    if n_batches is None:
        n_batches = len(data) // batch_size

    return calibration_batches(data, n_batches=n_batches, batch_size=batch_size, seed=seed)
