"""The per-image transforms of the releases (torchvision ``transforms.v2``): training augmentation
(crop, flip, AutoAugment, Cutout) and the deterministic test transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

from ftbc.data.catalog import dataset_info

__all__ = ["build_transform"]


def build_transform(dataset: str, *, train: bool, autoaugment: bool = False, cutout: int = 0,
                    cutout_before_normalize: bool = False) -> Callable:
    """Build the per-image transform of the releases (torchvision ``transforms.v2``).

    CIFAR: the input is a uint8 ``[3, 32, 32]`` tensor (a :class:`ftbc.data.in_memory.TensorImageDataset` item).
    Augmentation runs on uint8 (AutoAugment needs integer images); Cutout runs after
    ``Normalize`` with value 0 as in the QCFS release, as a ``RandomErasing`` square that
    always lies fully inside the image. ImageNet: the input is a PIL image (``ImageFolder``).

    Args:
        dataset: a key of :data:`ftbc.data.catalog.DATASETS`.
        train: add the training augmentation; the test transform is deterministic.
        autoaugment: add AutoAugment (CIFAR10 policy on CIFAR, IMAGENET policy on ImageNet); train only.
        cutout: side of the Cutout square in pixels, 0 for none; train only.
        cutout_before_normalize: erase to black pixels before ``Normalize`` (the SNN
            Calibration release's loader) instead of to 0 after it (QCFS's).

    Returns:
        A callable mapping one image to a normalised float32 ``[3, S, S]`` tensor.
    """
    info = dataset_info(dataset)
    size = info.image_size
    if not 0 <= cutout < size:
        raise ValueError(f"cutout must be in [0, {size}), got {cutout}")
    to_float: list[Any] = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    if info.name == "imagenet":
        policy = v2.AutoAugmentPolicy.IMAGENET
        ops: list[Any] = ([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train
                          else [v2.Resize(256, antialias=True), v2.CenterCrop(size)])
        to_float.insert(0, v2.ToImage())
    else:
        policy = v2.AutoAugmentPolicy.CIFAR10
        ops = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if train else []
    if train and autoaugment:
        ops.append(v2.AutoAugment(policy))
    erase: list[Any] = []
    if train and cutout:
        frac = cutout * cutout / (size * size)  # RandomErasing's side = round(sqrt(frac * H * W)) = cutout
        erase.append(v2.RandomErasing(p=1.0, scale=(frac, frac), ratio=(1.0, 1.0), value=0))
    ops += erase + to_float if cutout_before_normalize else to_float + erase
    return v2.Compose(ops)
