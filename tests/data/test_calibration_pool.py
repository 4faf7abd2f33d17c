"""The calibration pool: held-out slices never move the calibration images; draws are seeded;
the 'train' transform is the release loader's augmentation."""

from pathlib import Path

import pytest
import torch

import ftbc.models as ftbc_models
from baselines import get_method
from conftest import write_imagefolder
from conftest import write_cifar10_tree
from ftbc.data.calibration_pool import (CROP_FLIP, QCFS_LOADER, SNNC_LOADER, CalibrationPool, holdout_indices,
                                        reserve_size, split_reserve)
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.data.in_memory import TensorImageDataset
from ftbc.errors import DataError
from ftbc.data.eval_sets import load_eval_data

SMALL = {"threshold_batches": 2, "threshold_batch_size": 16, "threshold_positions": 512}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool") / "cifar10-jpeg"
    return write_cifar10_tree(root, train_per_class=40, test_per_class=2)


def test_reserve_is_fixed_disjoint_and_holds_the_holdout():
    pool, reserve = split_reserve(1000)
    assert len(reserve) == reserve_size(1000) == 50 and not set(pool) & set(reserve)
    assert sorted(pool + reserve) == list(range(1000))
    assert (pool, reserve) == split_reserve(1000)
    assert set(holdout_indices(1000, 20)) <= set(reserve)
    assert reserve_size(50_000) == 2500 and reserve_size(1_281_167) == 2500
    with pytest.raises(DataError, match="reserve of 50"):
        holdout_indices(1000, 51)


def _convert(tree, holdout: int, method_name: str, act: str, **over):
    pool, held, _ = load_eval_data("cifar10", str(tree), download=False, holdout=holdout, n_test=0,
                                   batch_size=64, calibration_transform="train")
    torch.manual_seed(0)
    kw = {"y_th": 1.0} if act == "clip" else {}
    model = ftbc_models.create_model("vgg_small", num_classes=10, act_layer=act, **kw).eval()
    method = get_method(method_name, "cifar10").with_overrides({**SMALL, **over})
    res = convert(model, method, data=pool.for_method(method), T=4, seed=3, holdout=held)
    return res, held


@pytest.mark.parametrize("method_name,act,over", [
    ("snnc_light", "relu", {"bias.images": 16}),
    ("ftbc_rts", "clip", {"ftbc.iterations": 2, "ftbc.batches": 1, "ftbc.batch_size": 16}),
])
def test_holdout_changes_no_threshold_and_no_calibrated_value(tree, method_name, act, over):
    plain, none = _convert(tree, 0, method_name, act, **over)
    held_run, held = _convert(tree, 12, method_name, act, **over)
    assert none is None and held[0].shape[0] == 12
    a, b = plain.snn.state_dict(), held_run.snn.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    thetas = [n.threshold for _, n in spiking_layers(plain.snn)]
    assert len(thetas) >= 3 and all(t.abs().sum() > 0 for t in thetas)


def test_draws_are_seeded_augmented_and_from_the_pool_only():
    images = torch.arange(200, dtype=torch.uint8).reshape(200, 1, 1, 1).expand(200, 3, 32, 32).contiguous()
    ds = TensorImageDataset(images, torch.zeros(200))
    train = CalibrationPool(ds, "cifar10", transform_name="train", augmentation=SNNC_LOADER)
    test = CalibrationPool(ds, "cifar10", transform_name="test")
    a, b, c = train.draw(2, 8, 5), train.draw(2, 8, 5), train.draw(2, 8, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    plain = test.draw(2, 8, 5)
    assert not torch.equal(plain[0], a[0])  # crop padding, flips, AutoAugment and Cutout change pixels
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    drawn = torch.round((torch.cat(plain)[:, :, 0, 0] * std + mean) * 255).long()[:, 0]
    assert not set(drawn.tolist()) & set(split_reserve(200)[1])  # image value = its index
    assert test.describe()["calibration_pool"] == 190


def test_each_release_loader_has_its_own_augmentation():
    assert get_method("rts").calibration_augmentation == CROP_FLIP
    assert get_method("ftbc_rts").calibration_augmentation == CROP_FLIP
    for name in ("qcfs", "ftbc_qcfs"):
        assert get_method(name).calibration_augmentation == QCFS_LOADER
    for name in ("snnc_none", "snnc_light", "snnc_advanced", "ftbc_relu", "maxnorm"):
        assert get_method(name).calibration_augmentation == SNNC_LOADER


def test_a_whole_pass_yields_every_pool_image_once_batch_by_batch():
    """RTS's maxima: one pass over the whole (augmenting) loader, here the whole pool."""
    from ftbc.data.calibration_pool import draw_batches

    images = torch.arange(200, dtype=torch.uint8).reshape(200, 1, 1, 1).expand(200, 3, 32, 32).contiguous()
    pool = CalibrationPool(TensorImageDataset(images, torch.zeros(200)), "cifar10", transform_name="test")
    batches = draw_batches(pool, None, 64, seed=2)
    assert not isinstance(batches, list)  # a generator: one batch in memory at a time
    batches = list(batches)
    assert [len(b) for b in batches] == [64, 64, 62]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    seen = torch.round((torch.cat(batches)[:, :, 0, 0] * std + mean) * 255).long()[:, 0].tolist()
    assert sorted(seen) == sorted(pool.indices)
    assert get_method("rts").threshold_batches is None
    assert (get_method("ftbc_rts").threshold_batches, get_method("ftbc_rts").threshold_batch_size) == (12, 32)
