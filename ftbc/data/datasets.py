"""Datasets, transforms and deterministic index draws for training, calibration and evaluation.

CIFAR images are small enough to hold in memory as one uint8 tensor, so an
ImageFolder copy of CIFAR (the offline ``cifar10-jpeg`` tree) is decoded once
into a :class:`TensorImageDataset` and cached on disk; a second process loads
the cache instead of decoding 60,000 JPEGs again. ImageNet stays a lazy
``torchvision.datasets.ImageFolder``.

Calibration and hold-out draws use their own seeded ``torch.Generator``, so
they do not depend on the global RNG, the device or the number of workers.
Normalisation constants follow docs/methods.md section 7.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.transforms import v2

from ftbc._io import atomic_write
from ftbc.errors import DataError

__all__ = [
    "DatasetInfo", "DATASETS", "dataset_info", "build_transform", "TensorImageDataset", "load_split",
    "calibration_indices", "holdout_split", "calibration_batches", "make_loader",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset needs downstream: class count, normalisation and input size."""

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32),
    "cifar100": DatasetInfo("cifar100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32),
    "imagenet": DatasetInfo("imagenet", 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
}
# The dataset names (the single list: CLI help, workflow wildcards; the config schema's enums are tested
# against it), and as the CLI help words them.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
DATASET_NAMES_TEXT = ", ".join(DATASET_NAMES[:-1]) + " or " + DATASET_NAMES[-1]

# CIFAR label order (alphabetical, as torchvision's CIFAR10/CIFAR100 ``classes``). A
# checkpoint trained on either copy expects label i = class i, so folders must match.
CIFAR_CLASSES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": tuple("""
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
        cabbage camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
        dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
        leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
        otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
        rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
        sweet_pepper table tank telephone television tiger tractor train tulip turtle wardrobe whale
        willow_tree wolf woman worm""".split()),
}

# The files torchvision's ImageFolder accepts; PIL decodes all of them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
_CACHE_VERSION = 2  # 2: safetensors (1 was torch.save)
_LAYOUT = "expected an ImageFolder tree root/train/<class>/*.jpg and root/test/ (or val/)"
_HOW_TO_GET = {
    "cifar10": "for CIFAR-10 offline: tar xzf cifar10-jpeg.tar.gz and pass the extracted folder, or pass --download",
    "cifar100": "for CIFAR-100: pass --download (torchvision fetches it) or an ImageFolder copy",
    "imagenet": "for ImageNet: pass the root of your own copy (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)",
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset ('cifar10', 'CIFAR-10', ...); an unknown name raises DataError."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    return DATASETS[key]


def build_transform(dataset: str, *, train: bool, autoaugment: bool = False, cutout: int = 0,
                    cutout_before_normalize: bool = False) -> Callable:
    """Build the per-image transform of the releases (torchvision ``transforms.v2``).

    CIFAR: the input is a uint8 ``[3, 32, 32]`` tensor (a :class:`TensorImageDataset` item).
    Augmentation runs on uint8 (AutoAugment needs integer images); Cutout runs after
    ``Normalize`` with value 0 as in the QCFS release, as a ``RandomErasing`` square that
    always lies fully inside the image. ImageNet: the input is a PIL image (``ImageFolder``).

    Args:
        dataset: a key of :data:`DATASETS`.
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


def load_split(dataset: str, root: str | os.PathLike, split: str, *, transform: Callable | None = None,
               download: bool = False) -> Dataset:
    """Load one split of a dataset from an ImageFolder tree or torchvision's CIFAR files.

    ``root`` may be the tree itself (``root/train/<class>/``, ``root/test/`` or ``root/val/``),
    its parent holding ``<dataset>-jpeg/`` or a single extracted folder. CIFAR trees are decoded
    once into a :class:`TensorImageDataset` and cached (see :func:`_load_cifar_folder`); without
    a tree, CIFAR comes from ``torchvision.datasets.CIFAR10/100``. ImageNet is a lazy
    ``torchvision.datasets.ImageFolder`` yielding PIL images to ``transform`` (its class count
    is not checked, so subsets of ImageNet work).

    Args:
        dataset: a key of :data:`DATASETS`.
        root: data folder.
        split: 'train' or 'test' ('test' falls back to 'val/').
        transform: per-image transform, e.g. :func:`build_transform`.
        download: let torchvision download CIFAR into ``root`` when no copy is found.

    Raises:
        DataError: the data is missing, has the wrong layout, class folders or image size.
    """
    info = dataset_info(dataset)
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    how = _HOW_TO_GET[info.name]
    tree = _find_tree(root, info.name) if root.is_dir() else None
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
            raise DataError(f"{split_dir} is not a usable ImageFolder ({_one_line(e)}): {_LAYOUT}") from None
    return _load_cifar_folder(info, split_dir, transform)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _split_hint(root: Path) -> str:
    return " (this looks like a split folder: pass its parent)" if root.name in ("train", "test", "val") else ""


def _has_split(path: Path) -> bool:
    return any((path / s).is_dir() for s in ("train", "test", "val"))


def _find_tree(root: Path, name: str) -> Path | None:
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
            raise DataError(f"could not download {info.name} into {root} ({_one_line(e)}); "
                            f"{_HOW_TO_GET[info.name]}") from None
        raise DataError(f"data root {root} has no {split}/ folder{_split_hint(root)} (nor torchvision's "
                        f"{cls.base_folder}/): {_LAYOUT}; {_HOW_TO_GET[info.name]}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorImageDataset(images, torch.tensor(ds.targets, dtype=torch.int64), ds.classes, transform)


def _load_cifar_folder(info: DatasetInfo, split_dir: Path, transform: Callable | None) -> TensorImageDataset:
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
    cache_file = _cache_dir() / f"{info.name}-{split_dir.name}-{key[:20]}.safetensors"
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


def _cache_dir() -> Path:
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
    """Load a cache file written by :func:`_load_cifar_folder`; None if absent or unusable."""
    if not path.is_file():
        return None
    try:
        data = load_file(str(path))
        images, labels = data["images"], data["labels"]
    except Exception as e:  # truncated or foreign file: decode again and overwrite it
        warnings.warn(f"ignoring unreadable data cache {path}: {_one_line(e)}")
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
            raise DataError(f"cannot decode image {path} ({_one_line(e)}): replace or remove the file") from None
        if arr.shape != (s, s, 3):
            raise DataError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, expected {s}x{s} for {info.name}: "
                            f"give the original-size images (this loader does not resize)")
        out[i] = arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


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
