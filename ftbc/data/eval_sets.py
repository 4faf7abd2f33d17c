"""The images ``ftbc evaluate`` uses: the calibration pool, an optional held-out slice from the
reserve, and the test split (or its fixed subset) as batches."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ftbc.data.calibration_pool import CalibrationPool, holdout_indices
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc.errors import UserError


def load_eval_data(dataset: str, root: str, *, download: bool, holdout: int, n_test: int, batch_size: int,
                   test_seed: int = 0, calibration_transform: str = "train", num_workers: int = 0):
    """(calibration pool, holdout tensors or None, :class:`TestBatches`).

    The pool is the training split minus the fixed reserve (:mod:`ftbc.data.calibration_pool`);
    a held-out slice comes from the reserve, so it never changes the calibration images.
    The test subset (``n_test > 0``) is drawn with ``test_seed``, one seed for a whole grid,
    whatever the ANN or calibration seed. Test and held-out images get the test-time transform.
    """
    from torch.utils.data import Subset

    tf = build_transform(dataset, train=False)
    train = load_split(dataset, root, "train", download=download)
    pool = CalibrationPool(train, dataset, transform_name=calibration_transform)
    held = None
    if holdout:
        evaluated = copy.copy(train)
        evaluated.transform = tf
        held = _stack(Subset(evaluated, holdout_indices(len(train), holdout)))
    test = load_test_batches(dataset, root, download=download, n_test=n_test, batch_size=batch_size,
                             test_seed=test_seed, num_workers=num_workers)
    return pool, held, test


def load_test_batches(dataset: str, root: str, *, download: bool, n_test: int, batch_size: int,
                      test_seed: int = 0, num_workers: int = 0) -> "TestBatches":
    """The test split (or its fixed ``n_test`` subset drawn with ``test_seed``), test-time transform."""
    from torch.utils.data import Subset

    test = load_split(dataset, root, "test", transform=build_transform(dataset, train=False), download=download)
    if n_test:
        g = torch.Generator().manual_seed(test_seed)
        test = Subset(test, torch.randperm(len(test), generator=g)[:n_test].sort().values.tolist())
    return TestBatches(test, batch_size, num_workers=num_workers)


class TestBatches:
    """The test split as ``(images, labels)`` batches in a fixed order, decoded and transformed
    batch by batch: evaluation holds one batch in memory, not the split (ImageNet's validation
    split as one float tensor would be about 30 GB). Iterable any number of times."""

    __test__ = False  # not a pytest class

    def __init__(self, dataset, batch_size: int, *, num_workers: int = 0) -> None:
        from torch.utils.data import DataLoader

        if len(dataset) == 0:
            raise UserError("no test images to evaluate")
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                 persistent_workers=num_workers > 0)
        self.n_images = len(dataset)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _stack(ds) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.as_tensor(ys)
