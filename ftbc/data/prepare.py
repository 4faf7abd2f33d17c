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
import hashlib
import os
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
    from ftbc.data.splits import SPLIT_FOLDERS

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
    """The folder holding ``train/`` and ``test/`` under ``root`` (see :func:`ftbc.data.splits.load_split`)."""
    from ftbc.data import splits

    tree = splits.find_tree(root, dataset) if root.is_dir() else None
    if tree is None or not (tree / "train").is_dir():
        raise DataError(f"{root} holds no {dataset} ImageFolder tree (train/ and test/)")
    return tree


def materialize(source: Path, dest: Path, limits: Limits | None = None, dataset: str = "cifar10") -> Path:
    """An ImageFolder tree for ``source``: the folder itself, or an extraction / subset at ``dest``."""
    if is_archive(source):
        return find_tree(extract(source, dest, limits), dataset)
    tree = find_tree(source, dataset)
    return make_subset(tree, dest, limits) if limits else tree


# The checkout this package runs from (an editable install), where data/ and ../shared/ are looked for.
CHECKOUT = Path(__file__).resolve().parents[2]
AUTO = "auto"
ROOT_ENV = "FTBC_DATA_ROOT"


def candidates(dataset: str) -> list[Path]:
    """Where a data root is looked for when none is given, in order: the checkout's ``data/``
    (the extracted ``<name>-jpeg`` folder, then its archive), then the archive in
    ``../shared/data/`` beside the checkout, then ``$FTBC_DATA_ROOT``."""
    from ftbc.data.catalog import dataset_info

    name = f"{dataset_info(dataset).name}-jpeg"
    found = [CHECKOUT / "data" / name, CHECKOUT / "data" / f"{name}.tar.gz",
             CHECKOUT.parent / "shared" / "data" / f"{name}.tar.gz"]
    env = os.environ.get(ROOT_ENV)
    return found + ([Path(env).expanduser()] if env else [])


def discover(dataset: str) -> Path | None:
    """The first of :func:`candidates` that exists, or None."""
    return next((c for c in candidates(dataset) if c.exists()), None)


def resolve_data_root(dataset: str, root: str | Path | None, *, download: bool = False) -> Path:
    """The folder a command reads ``dataset`` from, whatever it was given.

    A folder is itself; an archive is extracted once into the data cache and reused
    (keyed by its path, size and modification time); nothing (``None`` or ``'auto'``)
    is the first of :func:`candidates`, or, for CIFAR with ``download``, the checkout's
    ``data/`` for torchvision to download into.
    """
    if root is None or str(root) == AUTO:
        found = discover(dataset)
        if found is None:
            if download:
                return CHECKOUT / "data"
            where = ", ".join(str(c) for c in candidates(dataset))
            raise DataError(f"no {dataset} copy found (looked at {where}; set {ROOT_ENV}): pass --data-root, "
                            f"or --download for CIFAR")
        root = found
    root = Path(root).expanduser()
    if is_archive(root):
        if not root.is_file():
            raise DataError(f"archive {root} does not exist")
        from ftbc.data.catalog import dataset_info
        from ftbc.data.in_memory import cache_dir

        st = root.resolve().stat()
        key = hashlib.sha256(f"{root.resolve()}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return find_tree(extract(root, cache_dir() / "extracted" / f"{root.name}-{key}"),
                         dataset_info(dataset).name)
    return root


def prepare(dataset: str, root: str | Path, *, extract_to: str | Path | None = None,
            download: bool = False, subset: Limits | None = None) -> dict:
    """Resolve ``root`` (extracting an archive, taking a subset), load both splits, return what was found."""
    from ftbc.data.catalog import dataset_info
    from ftbc.data.splits import load_split

    info = dataset_info(dataset)
    if str(root) == AUTO:
        root = discover(info.name) or (CHECKOUT / "data" if download else None)
        if root is None:
            raise DataError(f"data_root is auto, and no {info.name} copy was found (looked at "
                            f"{', '.join(map(str, candidates(info.name)))}): set data_root or {ROOT_ENV}")
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
    from ftbc.data.catalog import DATASET_NAMES_TEXT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--dataset", required=True, help=DATASET_NAMES_TEXT)
    p.add_argument("--data-root", default=AUTO,
                   help="dataset folder, or a .tar.gz of one; 'auto' (default) looks in the checkout's data/, "
                        f"then ../shared/data/, then ${ROOT_ENV}")
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
