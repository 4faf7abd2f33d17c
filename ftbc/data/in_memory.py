"""CIFAR-sized images held in memory as one uint8 tensor, filled once from an ImageFolder split.

CIFAR images are small enough to hold in memory, so an ImageFolder copy of CIFAR
(the offline ``cifar10-jpeg`` tree) is decoded once into a :class:`TensorImageDataset`
and cached on disk; a second process loads the cache instead of decoding 60,000
JPEGs again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ftbc._io import atomic_write
from ftbc.data.catalog import CIFAR_CLASSES, DatasetInfo
from ftbc.errors import DataError, one_line

__all__ = ["TensorImageDataset", "load_cifar_folder", "cache_dir", "IMAGE_EXTENSIONS"]

# The files torchvision's ImageFolder accepts; PIL decodes all of them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 2  # 2: safetensors (1 was torch.save)


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor: CIFAR-sized data without per-item file I/O.

    Args:
        images: uint8 ``[N, 3, H, W]``.
        labels: integer ``[N]``; stored as int64.
        classes: class names, label i = ``classes[i]``; defaults to ``'0'..'K-1'``.
        transform: applied to each uint8 ``[3, H, W]`` image; None returns the uint8 image.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None,
                 transform: Callable | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def load_cifar_folder(info: DatasetInfo, split_dir: Path, transform: Callable | None) -> TensorImageDataset:
    """Decode a CIFAR ImageFolder split into memory, through an on-disk cache.

    The cache file (under ``$FTBC_CACHE`` or ``~/.cache/ftbc``) is keyed by the split's
    absolute path and every file's name, size and mtime, so an edited copy is decoded again.
    """
    expected = CIFAR_CLASSES[info.name]
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if len(classes) != info.num_classes:
        raise DataError(f"{split_dir} has {len(classes)} class folders, expected {info.num_classes} for "
                        f"{info.name} (one folder per class: {', '.join(expected[:3])}, ...)")
    if tuple(classes) != expected:  # sorted folder i must be CIFAR label i
        bad = next(c for c, e in zip(classes, expected) if c != e)
        raise DataError(f"{split_dir}: class folder {bad!r} is not a {info.name} class name; label i is "
                        f"folder i, so the folders must be the CIFAR names ({', '.join(expected[:3])}, ...)")
    paths, labels, key = _list_images(split_dir, classes)
    cache_file = cache_dir() / f"{info.name}-{split_dir.name}-{key[:20]}.safetensors"
    cached = _read_cache(cache_file, len(paths), info.image_size)
    if cached is not None:
        return TensorImageDataset(cached[0], cached[1], expected, transform)
    images = _decode(paths, info)
    labels_t = torch.tensor(labels, dtype=torch.int64)
    try:
        with atomic_write(cache_file) as tmp:
            save_file({"images": images.contiguous(), "labels": labels_t.contiguous()}, str(tmp))
    except OSError as e:
        warnings.warn(f"could not write data cache {cache_file} ({e}); set FTBC_CACHE to a writable folder")
    return TensorImageDataset(images, labels_t, expected, transform)


def cache_dir() -> Path:
    """Where decoded splits are cached: ``$FTBC_CACHE``, else ``~/.cache/ftbc``."""
    return Path(os.environ.get("FTBC_CACHE") or Path.home() / ".cache" / "ftbc").expanduser()


def _list_images(split_dir: Path, classes: Sequence[str]) -> tuple[list[str], list[int], str]:
    """List image files in ImageFolder order (sorted classes, sorted names) and hash their stats."""
    digest = hashlib.sha256(f"ftbc-data-v{_CACHE_VERSION}\n{split_dir.resolve()}\n".encode())
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        entries = sorted((e for e in os.scandir(split_dir / name) if e.is_file() and not e.name.startswith(".")
                          and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
        if not entries:
            raise DataError(f"class folder {split_dir / name} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
        for e in entries:
            st = e.stat()
            digest.update(f"{name}/{e.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            paths.append(e.path)
            labels.append(label)
    return paths, labels, digest.hexdigest()


def _read_cache(path: Path, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Load a cache file written by :func:`load_cifar_folder`; None if absent or unusable."""
    if not path.is_file():
        return None
    try:
        data = load_file(str(path))
        images, labels = data["images"], data["labels"]
    except Exception as e:  # truncated or foreign file: decode again and overwrite it
        warnings.warn(f"ignoring unreadable data cache {path}: {one_line(e)}")
        return None
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, size, size) or labels.shape != (n,):
        return None
    return images, labels


def _decode(paths: Sequence[str], info: DatasetInfo) -> torch.Tensor:
    """Decode RGB images with PIL into uint8 ``[N, 3, S, S]``; each must be S x S already.

    PIL rather than ``torchvision.io``: torchvision deprecated its decoders in 0.29.
    """
    s = info.image_size
    out = np.empty((len(paths), s, s, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"cannot decode image {path} ({one_line(e)}): replace or remove the file") from None
        if arr.shape != (s, s, 3):
            raise DataError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, expected {s}x{s} for {info.name}: "
                            f"give the original-size images (this loader does not resize)")
        out[i] = arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
