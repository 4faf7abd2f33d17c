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
import contextlib
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from ftbc._io import write_json
from ftbc.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


Limits = dict[str, "int | None"]


def _under_limit(counts: dict, rel: Path, limits: Limits | None) -> bool:
    """True for an image ``split/class/name`` still under its split's per-class limit (None: all)."""
    if limits is None:
        return True
    if len(rel.parts) != 3:
        return False
    limit = limits.get(rel.parts[0])
    key = rel.parts[:2]
    counts[key] = counts.get(key, 0) + 1
    return limit is None or counts[key] <= limit


@contextlib.contextmanager
def _building(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest``, renamed to ``dest`` on success and removed on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extract(archive: Path, dest: Path, limits: Limits | None = None) -> Path:
    """Extract ``archive`` (all of it, or the first N images per class of each split) into ``dest``.

    Members are read in archive order and unsafe paths refused; a finished
    extraction already at ``dest`` is reused.
    """
    if dest.is_dir():
        return dest
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    try:
        with _building(dest) as tmp, tarfile.open(archive) as tar:
            counts: dict = {}
            members = [m for m in tar if m.isdir() or (m.isfile() and _under_limit(
                counts, Path(*Path(m.name).parts[1:]), limits))]
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse unsafe members
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"could not extract {archive}: {' '.join(str(e).split())}") from None
    return dest


def make_subset(tree: Path, dest: Path, limits: Limits) -> Path:
    """Link the first N images per class of each split of an ImageFolder ``tree`` into ``dest``.

    For smoke runs: the same pipeline on a slice small enough for CI (None: a
    split whole). Symbolic links, built in a temporary folder renamed into place.
    """
    from ftbc.data import SPLIT_FOLDERS

    if dest.is_dir():
        return dest
    with _building(dest) as tmp:
        counts: dict = {}
        for split in ("train", "test"):
            split_dir = next((tree / s for s in SPLIT_FOLDERS[split] if (tree / s).is_dir()), None)
            if split_dir is None:
                raise DataError(f"{tree} has no {split}/ folder to take a subset of")
            for cls in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
                (tmp / split / cls.name).mkdir(parents=True)
                for f in sorted(f for f in cls.iterdir() if f.is_file() and not f.name.startswith(".")):
                    if _under_limit(counts, Path(split, cls.name, f.name), limits):
                        (tmp / split / cls.name / f.name).symlink_to(f.resolve())
    return dest


def find_tree(root: Path, dataset: str = "cifar10") -> Path:
    """The folder holding ``train/`` and ``test/`` under ``root`` (see :func:`ftbc.data.load_split`)."""
    from ftbc.data import _find_tree

    tree = _find_tree(root, dataset) if root.is_dir() else None
    if tree is None or not (tree / "train").is_dir():
        raise DataError(f"{root} holds no {dataset} ImageFolder tree (train/ and test/)")
    return tree


def materialize(source: Path, dest: Path, limits: Limits | None = None, dataset: str = "cifar10") -> Path:
    """An ImageFolder tree for ``source``: the folder itself, or an extraction / subset at ``dest``."""
    if is_archive(source):
        return find_tree(extract(source, dest, limits), dataset)
    tree = find_tree(source, dataset)
    return make_subset(tree, dest, limits) if limits else tree


def prepare(dataset: str, root: str | Path, *, extract_to: str | Path | None = None,
            download: bool = False, subset: Limits | None = None) -> dict:
    """Resolve ``root`` (extracting an archive, taking a subset), load both splits, return what was found."""
    from ftbc.data import dataset_info, load_split

    info = dataset_info(dataset)
    root = Path(root).expanduser()
    if (is_archive(root) or subset) and extract_to is None:
        raise DataError(f"give --extract-to, the folder to extract {root} into or to put the subset in")
    if is_archive(root) or subset:
        root = materialize(root, Path(extract_to), subset, info.name)
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
