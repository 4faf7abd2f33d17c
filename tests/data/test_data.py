"""Tests for ftbc.data: the offline CIFAR-10 copy, transforms, deterministic draws and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from ftbc.data import in_memory
from ftbc.data.catalog import CIFAR_CLASSES, DATASETS, DatasetInfo, dataset_info
from ftbc.data.draws import calibration_batches, calibration_indices, holdout_split
from ftbc.data.in_memory import TensorImageDataset
from ftbc.data.loaders import make_loader
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc.errors import DataError, UserError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def pil_chw(path: str | Path) -> torch.Tensor:
    """Decode a file with PIL into uint8 [3, H, W], independently of ftbc.data."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def data_error(fn, *args, **kwargs) -> str:
    """Call ``fn``, expect a DataError, check its message is one line and return it."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    assert isinstance(info.value, UserError)
    return msg


# --- dataset constants ------------------------------------------------------------------------------------------

def test_dataset_constants():
    assert DATASETS["cifar10"] == DatasetInfo("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32)
    assert DATASETS["cifar100"] == DatasetInfo("cifar100", 100, (0.5071, 0.4867, 0.4408),
                                               (0.2675, 0.2565, 0.2761), 32)
    assert DATASETS["imagenet"] == DatasetInfo("imagenet", 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)
    assert dataset_info("CIFAR-10") is DATASETS["cifar10"]
    msg = data_error(dataset_info, "mnist")
    assert "mnist" in msg and all(name in msg for name in DATASETS)


def test_cifar_class_lists_are_label_order():
    for name in ("cifar10", "cifar100"):
        names = CIFAR_CLASSES[name]
        assert len(names) == len(set(names)) == DATASETS[name].num_classes
        assert list(names) == sorted(names)  # ImageFolder's sorted folders = CIFAR labels
    assert CIFAR_CLASSES["cifar10"] == CIFAR10_CLASSES


# --- the real offline CIFAR-10 copy -----------------------------------------------------------------------------

@pytest.mark.parametrize("split, n, per_class", [("train", 50_000, 5000), ("test", 10_000, 1000)])
def test_real_cifar10_sizes_and_labels(request, split, n, per_class):
    ds = request.getfixturevalue(f"cifar10_{split}")
    assert isinstance(ds, TensorImageDataset) and len(ds) == n
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (n, 3, 32, 32)
    assert ds.labels.dtype == torch.int64 and int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    assert ds.classes == list(CIFAR10_CLASSES)
    image, label = ds[0]
    assert image.dtype == torch.uint8 and isinstance(label, int)


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_cifar10_matches_pil_and_imagefolder_order(request, cifar10_root, split):
    ds = request.getfixturevalue(f"cifar10_{split}")
    reference = ImageFolder(str(cifar10_root / split))
    assert reference.classes == list(CIFAR10_CLASSES)
    assert len(reference) == len(ds)
    for i in [0, 1, 999, len(ds) // 2 + 7, len(ds) - 1]:
        path, label = reference.samples[i]
        assert int(ds.labels[i]) == label == CIFAR10_CLASSES.index(Path(path).parent.name)
        assert torch.equal(ds.images[i], pil_chw(path)), path


def test_real_cifar10_second_load_hits_cache(cifar10_root, cifar10_test, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(in_memory, "_decode", no_decode)
    again = load_split("cifar10", cifar10_root, "test")
    assert torch.equal(again.images, cifar10_test.images) and torch.equal(again.labels, cifar10_test.labels)


def test_real_cifar10_from_parent_folder(cifar10_root, cifar10_test, monkeypatch):
    monkeypatch.setattr(in_memory, "_decode", lambda *a, **k: pytest.fail("cache key should not depend on the root form"))
    ds = load_split("cifar10", cifar10_root.parent, "test")  # parent of the extracted cifar10-jpeg/
    assert torch.equal(ds.images, cifar10_test.images)


def test_normalised_real_images(cifar10_test):
    tf = build_transform("cifar10", train=False)
    x = torch.stack([tf(cifar10_test.images[i]) for i in range(0, 10_000, 10)])
    assert x.dtype == torch.float32 and tuple(x.shape) == (1000, 3, 32, 32)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    # the releases' "std" constants are smaller than the pixel std, so the result has std ~1.2
    assert ((x.std(dim=(0, 2, 3)) > 1.0) & (x.std(dim=(0, 2, 3)) < 1.4)).all()


# --- transforms -------------------------------------------------------------------------------------------------

@pytest.fixture
def uint8_image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_test_transform_is_exact_and_deterministic(uint8_image):
    tf = build_transform("cifar10", train=False)
    mean, std = torch.tensor(DATASETS["cifar10"].mean), torch.tensor(DATASETS["cifar10"].std)
    expected = (uint8_image.float() / 255 - mean[:, None, None]) / std[:, None, None]
    outs = [tf(uint8_image) for _ in range(5)]
    assert outs[0].dtype == torch.float32 and outs[0].shape == (3, 32, 32)
    assert torch.allclose(outs[0], expected, atol=1e-6)
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("kwargs", [{}, {"autoaugment": True}, {"autoaugment": True, "cutout": 16}])
def test_train_transform_is_random(uint8_image, kwargs):
    tf = build_transform("cifar10", train=True, **kwargs)
    torch.manual_seed(0)
    outs = [tf(uint8_image) for _ in range(10)]
    assert all(o.dtype == torch.float32 and o.shape == (3, 32, 32) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) >= 5


def test_cutout_is_a_zero_square(uint8_image):
    tf = build_transform("cifar10", train=True, cutout=16)
    torch.manual_seed(1)
    for _ in range(5):
        zero = (tf(uint8_image) == 0).all(dim=0)
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert int(zero.sum()) == 256
        assert int(rows[-1] - rows[0]) + 1 == 16 and int(cols[-1] - cols[0]) + 1 == 16
    with pytest.raises(ValueError):
        build_transform("cifar10", train=True, cutout=32)


@pytest.mark.parametrize("train", [True, False])
def test_imagenet_transform_shape(train):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (260, 300, 3), dtype=np.uint8))
    out = build_transform("imagenet", train=train)(image)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 224, 224)


# --- TensorImageDataset -----------------------------------------------------------------------------------------

def test_tensor_image_dataset():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.tensor([0, 1, 2, 1]), transform=lambda x: x.float() + 1)
    image, label = ds[2]
    assert len(ds) == 4 and label == 2 and isinstance(label, int)
    assert image.dtype == torch.float32 and torch.all(image == 1)
    assert ds.classes == ["0", "1", "2"] and ds.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        TensorImageDataset(images.float(), torch.zeros(4))
    with pytest.raises(ValueError):
        TensorImageDataset(images, torch.zeros(3))


# --- deterministic draws ----------------------------------------------------------------------------------------

def test_calibration_indices():
    a = calibration_indices(50_000, 1024, seed=0)
    assert a == calibration_indices(50_000, 1024, seed=0)
    assert a != calibration_indices(50_000, 1024, seed=1)
    assert len(set(a)) == 1024 and all(0 <= i < 50_000 for i in a)
    _, held = holdout_split(50_000, 5000, seed=0)
    b = calibration_indices(50_000, 1024, seed=0, exclude=held)
    kept = [i for i in a if i not in set(held)]
    assert not set(b) & set(held) and b[:len(kept)] == kept  # excluding does not reshuffle the rest
    assert "calibration needs" in data_error(calibration_indices, 10, 8, seed=0, exclude=[0, 1, 2])


def test_holdout_split():
    train, held = holdout_split(1000, 100, seed=3)
    assert (train, held) == holdout_split(1000, 100, seed=3)
    assert held != holdout_split(1000, 100, seed=4)[1]
    assert len(held) == 100 and len(train) == 900
    assert not set(train) & set(held) and sorted(train + held) == list(range(1000))
    data_error(holdout_split, 10, 10, seed=0)


def _random_dataset(n: int = 64, transform=None) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.arange(n) % 10, transform=transform)


def test_calibration_batches():
    ds = _random_dataset(transform=build_transform("cifar10", train=False))
    batches = calibration_batches(ds, n_batches=3, batch_size=8, seed=0)
    assert len(batches) == 3 and all(b.shape == (8, 3, 32, 32) and b.dtype == torch.float32 for b in batches)
    idx = calibration_indices(64, 24, seed=0)
    assert torch.equal(torch.cat(batches), torch.stack([ds[i][0] for i in idx]))
    again = calibration_batches(ds, n_batches=3, batch_size=8, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    assert not torch.equal(batches[0], calibration_batches(ds, n_batches=1, batch_size=8, seed=1)[0])


def test_calibration_batches_with_augmentation_are_reproducible():
    ds = _random_dataset(transform=build_transform("cifar10", train=True, autoaugment=True))
    torch.manual_seed(123)
    first = calibration_batches(ds, n_batches=2, batch_size=4, seed=5)
    torch.manual_seed(456)  # the global RNG must not matter
    second = calibration_batches(ds, n_batches=2, batch_size=4, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_calibration_batches_need_float_images():
    with pytest.raises(TypeError, match="transform"):
        calibration_batches(_random_dataset(), n_batches=1, batch_size=4, seed=0)


class _NoisyDataset(torch.utils.data.Dataset):
    """Item i = (i, a draw from torch and from NumPy), to check the workers' seeding."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand())])


def test_make_loader_order_and_worker_seeds():
    def run(seed: int, workers: int) -> torch.Tensor:
        return torch.cat(list(make_loader(_NoisyDataset(), 8, shuffle=True, seed=seed, num_workers=workers)))

    a0, a2, b2 = run(0, 0), run(0, 2), run(0, 2)
    assert torch.equal(a0[:, 0], a2[:, 0])  # the order depends on the seed only
    assert sorted(a0[:, 0].tolist()) == list(range(32))
    assert torch.equal(a2, b2)  # worker draws (torch and NumPy) are seeded too
    assert not torch.equal(a0[:, 0], run(1, 0)[:, 0])
    loader = make_loader(_NoisyDataset(), 5, shuffle=False, drop_last=True)
    assert len(loader) == 6 and loader.persistent_workers is False


# --- synthetic ImageFolders: loading, cache and errors ----------------------------------------------------------

def test_missing_root(tmp_path):
    msg = data_error(load_split, "cifar10", tmp_path / "nowhere", "train")
    assert "does not exist" in msg and str(tmp_path / "nowhere") in msg and "tar xzf" in msg


def test_root_without_train_folder(tmp_path):
    msg = data_error(load_split, "cifar10", tmp_path, "train")
    assert "no train/ folder" in msg and "--download" in msg and "cifar-10-batches-py" in msg
    msg = data_error(load_split, "imagenet", tmp_path, "train")
    assert "no train/ folder" in msg


def test_split_folder_given_as_root(make_imagefolder):
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1)
    assert "pass its parent" in data_error(load_split, "cifar10", root / "train", "train")


def test_missing_test_split(make_imagefolder):
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1, splits=("train",))
    assert "no test/ or val/ folder" in data_error(load_split, "cifar10", root, "test")


def test_wrong_class_count(tiny_imagefolder):
    msg = data_error(load_split, "cifar10", tiny_imagefolder, "train")
    assert "3 class folders" in msg and "expected 10" in msg


def test_wrong_class_names(make_imagefolder):
    root = make_imagefolder(classes=[f"c{i}" for i in range(10)], per_class=1)
    assert "'c0' is not a cifar10 class" in data_error(load_split, "cifar10", root, "train")


def test_wrong_image_size(make_imagefolder):
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1, size=28)
    msg = data_error(load_split, "cifar10", root, "train")
    assert "28x28" in msg and "expected 32x32" in msg


def test_undecodable_image(make_imagefolder):
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1)
    (root / "train" / "cat" / "0000.png").write_bytes(b"not an image")
    assert "cannot decode image" in data_error(load_split, "cifar10", root, "train")


def test_empty_class_folder(make_imagefolder):
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1)
    (root / "train" / "dog" / "0000.png").unlink()
    assert "holds no images" in data_error(load_split, "cifar10", root, "train")


def test_synthetic_cifar_layout_and_parent_root(make_imagefolder):
    tree = make_imagefolder("parent/cifar10-jpeg", classes=CIFAR10_CLASSES, per_class=3, splits=("train", "val"))
    ds = load_split("cifar10", tree.parent, "test", transform=build_transform("cifar10", train=False))
    assert len(ds) == 30 and ds.labels.tolist() == [i // 3 for i in range(30)]
    assert torch.equal(ds.images[4], pil_chw(tree / "val" / "automobile" / "0001.jpg"))
    image, label = ds[4]
    assert image.dtype == torch.float32 and label == 1


def test_synthetic_cifar100(make_imagefolder):
    root = make_imagefolder(classes=CIFAR_CLASSES["cifar100"], per_class=1, splits=("train",))
    ds = load_split("cifar100", root, "train")
    assert len(ds) == 100 and ds.labels.tolist() == list(range(100)) and ds.classes[-1] == "worm"


def test_cache_hit_and_invalidation(make_imagefolder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FTBC_CACHE", str(cache))
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=2)
    first = load_split("cifar10", root, "train")
    assert len(list(cache.glob("cifar10-train-*.safetensors"))) == 1

    real_decode = in_memory._decode
    monkeypatch.setattr(in_memory, "_decode", lambda *a, **k: pytest.fail("cache miss"))
    hit = load_split("cifar10", root, "train")
    assert torch.equal(hit.images, first.images) and torch.equal(hit.labels, first.labels)

    changed = root / "train" / "bird" / "0000.png"  # index 4
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    monkeypatch.setattr(in_memory, "_decode", real_decode)
    fresh = load_split("cifar10", root, "train")
    assert int(fresh.images[4].sum()) == 0 and not torch.equal(fresh.images, first.images)
    assert len(list(cache.glob("cifar10-train-*.safetensors"))) == 2


def test_unreadable_cache_is_rebuilt(make_imagefolder, tmp_path, monkeypatch):
    monkeypatch.setenv("FTBC_CACHE", str(tmp_path / "cache"))
    root = make_imagefolder(classes=CIFAR10_CLASSES, per_class=1)
    first = load_split("cifar10", root, "test")
    (cache_file,) = (tmp_path / "cache").glob("*.safetensors")
    cache_file.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        again = load_split("cifar10", root, "test")
    assert torch.equal(again.images, first.images)


def test_imagenet_imagefolder(make_imagefolder):
    root = make_imagefolder(classes=["n01", "n02", "n03"], per_class=2, size=(250, 230), ext=".JPEG",
                            splits=("train", "val"))
    test = load_split("imagenet", root, "test", transform=build_transform("imagenet", train=False))
    assert isinstance(test, ImageFolder) and len(test) == 6 and test.classes == ["n01", "n02", "n03"]
    image, label = test[5]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 224, 224) and label == 2
    train = load_split("imagenet", root, "train", transform=build_transform("imagenet", train=True))
    assert tuple(train[0][0].shape) == (3, 224, 224)


def test_imagenet_split_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    assert "not a usable ImageFolder" in data_error(load_split, "imagenet", tmp_path, "train")
