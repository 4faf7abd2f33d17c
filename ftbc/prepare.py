"""``ftbc prepare-data``: make a dataset ready once, before any job reads it.

The workflow's first rule. Given a folder it checks the layout and class count
(and, for CIFAR ImageFolder copies, fills the decoded-image cache so later jobs
start at once); given a ``.tar.gz`` such as the offline CIFAR-10 copy it
extracts it first (into a temporary folder renamed into place, so a killed
extraction never looks finished); with ``--download`` torchvision fetches CIFAR.
It writes a small JSON record of what it found.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

from ftbc._io import write_json
from ftbc.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` unless a finished extraction is already there."""
    if dest.is_dir():
        return dest
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse unsafe members
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        tmp.rename(dest)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"could not extract {archive}: {' '.join(str(e).split())}") from None
    return dest


def make_subset(tree: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Copy the first ``per_class[split]`` images of every class of an ImageFolder ``tree`` to ``dest``.

    For smoke runs: the same pipeline on a slice small enough for CI. Built in a
    temporary folder and renamed into place, like :func:`extract`.
    """
    from ftbc.data import SPLIT_FOLDERS

    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for split, n in per_class.items():
            split_dir = next((tree / s for s in SPLIT_FOLDERS[split] if (tree / s).is_dir()), None)
            if split_dir is None:
                raise DataError(f"{tree} has no {split}/ folder to take a subset of")
            for cls in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
                (tmp / split / cls.name).mkdir(parents=True)
                for f in sorted(f for f in cls.iterdir() if f.is_file() and not f.name.startswith("."))[:n]:
                    shutil.copy2(f, tmp / split / cls.name / f.name)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _tree(root: Path, dataset: str) -> Path:
    from ftbc.data import _find_tree

    tree = _find_tree(root, dataset) if root.is_dir() else None
    if tree is None:
        raise DataError(f"a subset needs an ImageFolder copy of {dataset}; {root} is not one")
    return tree


def prepare(dataset: str, root: str | Path, *, extract_to: str | Path | None = None,
            download: bool = False, subset: dict[str, int] | None = None) -> dict:
    """Resolve ``root`` (extracting an archive, taking a subset), load both splits, return what was found."""
    from ftbc.data import dataset_info, load_split

    info = dataset_info(dataset)
    root = Path(root).expanduser()
    if (is_archive(root) or subset) and extract_to is None:
        raise DataError(f"give --extract-to, the folder to extract {root} into or to put the subset in")
    if is_archive(root):
        root = extract(root, Path(f"{extract_to}-full" if subset else extract_to))
    if subset:
        root = make_subset(_tree(root, info.name), Path(extract_to), subset)
    if not root.exists() and not download:
        raise DataError(f"data root {root} does not exist (pass download: true to let torchvision fetch "
                        f"{info.name}, or point data_root at a copy)")
    record = {"dataset": info.name, "root": str(root.resolve() if root.exists() else root)}
    for split in ("train", "test"):
        ds = load_split(info.name, root, split, download=download)
        record[f"n_{split}"] = len(ds)
        classes = getattr(ds, "classes", None)
        if classes is not None:
            record["classes"] = len(classes)
    return record


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100 or imagenet")
    p.add_argument("--data-root", required=True, help="dataset folder, or a .tar.gz of one")
    p.add_argument("--extract-to", help="where to extract an archive")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-root")
    p.add_argument("--train-per-class", type=int, default=0, help="copy only this many training images per class")
    p.add_argument("--test-per-class", type=int, default=0, help="copy only this many test images per class")
    p.add_argument("--out", required=True, help="JSON record to write")
    return p


def main(args: argparse.Namespace) -> int:
    subset = {k: n for k, n in (("train", args.train_per_class), ("test", args.test_per_class)) if n > 0}
    record = prepare(args.dataset, args.data_root, extract_to=args.extract_to, download=args.download,
                     subset=subset or None)
    write_json(args.out, record)
    print(f"{record['dataset']}: {record['n_train']} training / {record['n_test']} test images in {record['root']}")
    return 0
