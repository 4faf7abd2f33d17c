"""One split of a dataset, from wherever the user keeps it: an ImageFolder tree (or its parent,
or the one folder extracted there) or torchvision's CIFAR files, with errors that say how to fix
the layout. ImageNet stays a lazy ``torchvision.datasets.ImageFolder``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from ftbc.data.catalog import DatasetInfo, dataset_info
from ftbc.data.in_memory import TensorImageDataset, load_cifar_folder
from ftbc.errors import DataError, one_line

__all__ = ["SPLIT_FOLDERS", "load_split", "find_tree"]

SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
_LAYOUT = "expected an ImageFolder tree root/train/<class>/*.jpg and root/test/ (or val/)"
_HOW_TO_GET = {
    "cifar10": "for CIFAR-10 offline: tar xzf cifar10-jpeg.tar.gz and pass the extracted folder, or pass --download",
    "cifar100": "for CIFAR-100: pass --download (torchvision fetches it) or an ImageFolder copy",
    "imagenet": "for ImageNet: pass the root of your own copy (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)",
}


def load_split(dataset: str, root: str | os.PathLike, split: str, *, transform: Callable | None = None,
               download: bool = False) -> Dataset:
    """Load one split of a dataset from an ImageFolder tree or torchvision's CIFAR files.

    ``root`` may be the tree itself (``root/train/<class>/``, ``root/test/`` or ``root/val/``),
    its parent holding ``<dataset>-jpeg/`` or a single extracted folder. CIFAR trees are decoded
    once into a :class:`TensorImageDataset` and cached (see :func:`ftbc.data.in_memory.load_cifar_folder`); without
    a tree, CIFAR comes from ``torchvision.datasets.CIFAR10/100``. ImageNet is a lazy
    ``torchvision.datasets.ImageFolder`` yielding PIL images to ``transform`` (its class count
    is not checked, so subsets of ImageNet work).

    Args:
        dataset: a key of :data:`ftbc.data.catalog.DATASETS`.
        root: data folder.
        split: 'train' or 'test' ('test' falls back to 'val/').
        transform: per-image transform, e.g. :func:`ftbc.data.transforms.build_transform`.
        download: let torchvision download CIFAR into ``root`` when no copy is found.

    Raises:
        DataError: the data is missing, has the wrong layout, class folders or image size.
    """
    info = dataset_info(dataset)
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    how = _HOW_TO_GET[info.name]
    tree = find_tree(root, info.name) if root.is_dir() else None
    if tree is None:
        if info.name != "imagenet" and (root.is_dir() or download):
            return _load_torchvision_cifar(info, root, split, transform, download)
        if not root.exists():
            raise DataError(f"data root {root} does not exist: {_LAYOUT}; {how}")
        raise DataError(f"data root {root} has no {split}/ folder{_split_hint(root)}: {_LAYOUT}; {how}")
    split_dir = next((tree / s for s in SPLIT_FOLDERS[split] if (tree / s).is_dir()), None)
    if split_dir is None:
        wanted = " or ".join(f"{s}/" for s in SPLIT_FOLDERS[split])
        raise DataError(f"data root {tree} has no {wanted} folder: {_LAYOUT}; {how}")
    if info.name == "imagenet":
        try:
            return ImageFolder(str(split_dir), transform=transform)
        except OSError as e:  # FileNotFoundError: no class folders or no images
            raise DataError(f"{split_dir} is not a usable ImageFolder ({one_line(e)}): {_LAYOUT}") from None
    return load_cifar_folder(info, split_dir, transform)


def _split_hint(root: Path) -> str:
    return " (this looks like a split folder: pass its parent)" if root.name in ("train", "test", "val") else ""


def _has_split(path: Path) -> bool:
    return any((path / s).is_dir() for s in ("train", "test", "val"))


def find_tree(root: Path, name: str) -> Path | None:
    """Return the folder holding the splits: ``root``, ``root/<name>-jpeg`` or ``root``'s only subfolder."""
    if _has_split(root):
        return root
    if _has_split(root / f"{name}-jpeg"):
        return root / f"{name}-jpeg"
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and _has_split(subdirs[0]):
        return subdirs[0]
    return None


def _load_torchvision_cifar(info: DatasetInfo, root: Path, split: str, transform: Callable | None,
                            download: bool) -> TensorImageDataset:
    """Read torchvision's pickled CIFAR (downloading it if asked) into memory."""
    cls = CIFAR10 if info.name == "cifar10" else CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:
        if download:
            raise DataError(f"could not download {info.name} into {root} ({one_line(e)}); "
                            f"{_HOW_TO_GET[info.name]}") from None
        raise DataError(f"data root {root} has no {split}/ folder{_split_hint(root)} (nor torchvision's "
                        f"{cls.base_folder}/): {_LAYOUT}; {_HOW_TO_GET[info.name]}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorImageDataset(images, torch.tensor(ds.targets, dtype=torch.int64), ds.classes, transform)
