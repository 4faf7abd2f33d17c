"""Shared fixtures: the real offline CIFAR-10 copy and synthetic ImageFolder trees.

The real copy is extracted once per test run from ``cifar10-jpeg.tar.gz``
(``$FTBC_CIFAR10_ARCHIVE`` or ``<repo>/../shared/data/``). Where it is missing the
tests that need it are skipped, except on CI (``$CI`` set), where that is a failure.
Every run uses its own data cache (``$FTBC_CACHE``), never ``~/.cache/ftbc``.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftbc.train.allocator import keep_freed_memory

keep_freed_memory()  # as the ftbc command does: the suite's CPU runs are measured with it

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def _ftbc_cache(tmp_path_factory: pytest.TempPathFactory):
    """Give the run a private, empty data cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTBC_CACHE", str(tmp_path_factory.mktemp("ftbc-cache")))
        yield


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the extracted ``cifar10-jpeg`` folder (train/ and test/, 10 classes)."""
    explicit = os.environ.get("FTBC_CIFAR10_ARCHIVE")
    archive = Path(explicit) if explicit else DEFAULT_ARCHIVE
    if not archive.is_file():
        msg = (f"CIFAR-10 archive not found at {archive}: set FTBC_CIFAR10_ARCHIVE to the path of "
               f"cifar10-jpeg.tar.gz (see shared/data/README.md)")
        if os.environ.get("CI") or explicit:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    dest = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuse unsafe members
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    root = dest / "cifar10-jpeg"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.fail(f"{archive} did not extract to cifar10-jpeg/train and cifar10-jpeg/test", pytrace=False)
    return root


@pytest.fixture(scope="session")
def cifar10_train(cifar10_root: Path):
    """The real training split as a TensorImageDataset without transform (do not mutate)."""
    from ftbc.data.splits import load_split

    return load_split("cifar10", cifar10_root, "train")


@pytest.fixture(scope="session")
def cifar10_test(cifar10_root: Path):
    """The real test split as a TensorImageDataset without transform (do not mutate)."""
    from ftbc.data.splits import load_split

    return load_split("cifar10", cifar10_root, "test")


def write_imagefolder(root: Path, *, classes: int | Sequence[str] = 3, per_class: int = 2,
                      size: int | tuple[int, int] = 32, splits: Sequence[str] = ("train", "test"),
                      ext: str | Sequence[str] = (".png", ".jpg"), seed: int = 0) -> Path:
    """Write random RGB images as ``root/<split>/<class>/<k><ext>`` and return ``root``.

    Args:
        classes: a count (folders ``class0``, ``class1``, ...) or the folder names.
        size: side, or (width, height), of every image.
        ext: one extension, or several used in turn.
    """
    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    width, height = (size, size) if isinstance(size, int) else size
    exts = [ext] if isinstance(ext, str) else list(ext)
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}{exts[k % len(exts)]}")
    return root


def write_cifar10_tree(root: Path, *, train_per_class: int, test_per_class: int) -> Path:
    """Random 32x32 PNGs (lossless) in the 10 CIFAR-10 class folders, ``train`` drawn with seed 0 and ``test``
    with seed 1; returns ``root`` (name it ``.../cifar10-jpeg``)."""
    from ftbc.data.catalog import CIFAR_CLASSES

    classes = CIFAR_CLASSES["cifar10"]
    write_imagefolder(root, classes=classes, per_class=train_per_class, splits=("train",), ext=".png", seed=0)
    write_imagefolder(root, classes=classes, per_class=test_per_class, splits=("test",), ext=".png", seed=1)
    return root


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m ftbc`` subprocess: this one's as it is now (the run's private
    ``FTBC_CACHE`` included, so call it in the test, not at import), one thread, the checkout first on the path."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads (an in-process run matching a one-thread subprocess), then restore."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def make_imagefolder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_imagefolder("name", classes=..., size=..., ...)`` writes a tree under tmp_path."""

    def make(name: str = "imagefolder", **kwargs) -> Path:
        return write_imagefolder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    """A small 32x32 ImageFolder (train/ and test/, 3 classes, 4 PNG/JPEG images each)."""
    return write_imagefolder(tmp_path / "tiny", classes=3, per_class=4)


# -- registries ---------------------------------------------------------------------------------

def registries() -> dict[str, dict]:
    """The suite's registries by name (methods, calibration stages, threshold rules, models), of the modules
    imported so far: a fixture importing them itself would hide a test that forgets to.

    A test that registers something (a plugin, a method of its own) changes one of these
    module-level dicts; :func:`_restore_registries` puts every one back after each test.
    """
    import sys

    found = {"baselines": "_METHODS", "ftbc.snn.stages": "STAGES", "ftbc.snn.thresholds": "RULES",
             "ftbc.models._factory": "_ENTRYPOINTS"}
    return {f"{mod}.{attr}": getattr(sys.modules[mod], attr) for mod, attr in found.items() if mod in sys.modules}


def snapshot_registries() -> dict[str, dict]:
    """Copies of every registry's entries, for :func:`restore_registries`."""
    return {name: dict(reg) for name, reg in registries().items()}


def restore_registries(snapshot: dict[str, dict]) -> list[str]:
    """Put each registry of ``snapshot`` back, in place (modules that imported the dict by name see it too);
    returns the names of those that had changed. A registry first imported since is left as it is."""
    changed = []
    for name, reg in registries().items():
        if name in snapshot and reg != snapshot[name]:
            changed.append(name)
            reg.clear()
            reg.update(snapshot[name])
    return changed


@pytest.fixture(autouse=True)
def _restore_registries():
    """Whatever a test registers ends with it: no test sees another's methods, stages, rules or models
    (torn down after the test's own monkeypatch, so it restores the original dicts)."""
    snapshot = snapshot_registries()
    yield
    restore_registries(snapshot)


# -- process-wide state -------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _isolate_global_state():
    """Each test starts from the same torch RNG (seed 0), whatever ran before it, and leaves the RNG, torch's
    thread count and deterministic-algorithms flag, the working directory and the environment as it found them."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cwd, environ = os.getcwd(), _environ()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
            deterministic, warn_only):
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    now = _environ()
    if now != environ:
        for key in now.keys() - environ.keys():
            del os.environ[key]
        os.environ.update(environ)


def _environ() -> dict[str, str]:
    """The environment, less the variable pytest itself changes between a test's phases."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
