"""QCFS's quantisation steps L come from the releases per dataset and architecture (docs/methods.md section 3).

L = 4 on CIFAR-10 and CIFAR-100; on ImageNet L = 8 for ResNet-34 and L = 16 for
VGG-16 (the FTBC release's ``QCFS/ANN_SNN_QCFS/run_scripts/imagenet_cali.sh``).
An explicit ``--L`` wins; the resolved value is what ``model.json`` records.
"""

from __future__ import annotations

import pytest
import yaml

from ftbc.run import grid
from ftbc.errors import TrainingError
from ftbc.models.checkpoint import QCFS_L, qcfs_levels, resolve_act_kwargs
from ftbc.train.training import get_args_parser


@pytest.mark.parametrize("dataset, arch, L", [
    ("cifar10", "vgg16_qcfs", 4),
    ("cifar10", "resnet20_qcfs", 4),
    ("cifar10", "resnet18_cifar", 4),
    ("cifar10", "vgg_small", 4),
    ("cifar100", "vgg16_qcfs", 4),
    ("cifar100", "resnet18_cifar", 4),
    ("imagenet", "resnet34_qcfs", 8),
    ("imagenet", "resnet34_snnc", 8),
    ("imagenet", "vgg16_imagenet", 16),
    ("imagenet", "vgg16_rts_imagenet", 16),
])
def test_default_L_follows_the_release_table(dataset, arch, L):
    assert resolve_act_kwargs("qcfs", dataset, arch=arch) == {"L": L, "init_lambda": 8.0}
    assert qcfs_levels(dataset, arch) == L


def test_the_table_is_data_and_names_the_release_values():
    assert QCFS_L == {("cifar10", "*"): 4, ("cifar100", "*"): 4,
                      ("imagenet", "resnet34"): 8, ("imagenet", "vgg16"): 16}


def test_an_explicit_L_wins_and_is_checked():
    assert resolve_act_kwargs("qcfs", "imagenet", arch="vgg16_imagenet", L=4)["L"] == 4
    assert resolve_act_kwargs("qcfs", "cifar10", arch="vgg16_qcfs", L=16)["L"] == 16
    with pytest.raises(TrainingError, match="integer L >= 1"):
        resolve_act_kwargs("qcfs", "imagenet", arch="vgg16_imagenet", L=0)
    with pytest.raises(TrainingError, match="does not apply"):
        resolve_act_kwargs("relu", "imagenet", arch="vgg16_imagenet", L=8)


def test_no_release_value_falls_back_to_the_cifar_setting():
    # an architecture no release trained with QCFS on ImageNet, or no architecture given
    assert resolve_act_kwargs("qcfs", "imagenet", arch="vgg_small")["L"] == 4
    assert resolve_act_kwargs("qcfs", "imagenet")["L"] == 4
    assert resolve_act_kwargs("qcfs", "cifar10")["L"] == 4


def test_other_activations_are_unchanged():
    assert resolve_act_kwargs("relu", "imagenet", arch="vgg16_imagenet") == {}
    assert resolve_act_kwargs("clip", "imagenet", arch="vgg16_rts_imagenet") == {"y_th": 3.0}


def test_cli_leaves_L_unset_so_the_table_decides():
    args = get_args_parser().parse_args(["--data-root", "x", "--arch", "resnet34_qcfs", "--out", "o",
                                         "--dataset", "imagenet", "--act", "qcfs"])
    assert args.L is None
    assert resolve_act_kwargs(args.act, args.dataset, arch=args.arch, L=args.L)["L"] == 8


def test_train_records_the_resolved_L(monkeypatch, tmp_path):
    """``train`` fills the defaults from the table for its arch before anything else (recorded in model.json)."""
    import ftbc.train.training as training

    seen = {}

    class Stop(Exception):
        pass

    def fake_group(device):
        raise Stop

    monkeypatch.setattr(training.ftbc_dist, "process_group", fake_group)
    real = training.resolve_act_kwargs
    monkeypatch.setattr(training, "resolve_act_kwargs",
                        lambda *a, **k: seen.setdefault("kw", real(*a, **k)))
    with pytest.raises(Stop):
        training.train(dataset="imagenet", data_root=tmp_path, arch="vgg16_imagenet", act="qcfs",
                       recipe="imagenet", out=tmp_path / "o", progress=False)
    assert seen["kw"]["L"] == 16


def test_paper_grid_takes_L_from_the_table():
    """config/paper.yaml does not restate L: ImageNet QCFS ANNs train with --L from the table (8 / 16)."""
    config = yaml.safe_load(open(grid_config("paper.yaml")))
    qcfs = [a for a in grid.anns(config) if a.act == "qcfs"]
    assert qcfs and all(a.L is None and a.act_args == "" for a in qcfs)
    resolved = {(a.dataset, a.arch): resolve_act_kwargs("qcfs", a.dataset, arch=a.arch)["L"] for a in qcfs}
    assert resolved[("imagenet", "resnet34_qcfs")] == 8
    assert resolved[("imagenet", "vgg16_imagenet")] == 16
    assert {L for (ds, _), L in resolved.items() if ds != "imagenet"} == {4}


def grid_config(name: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "config" / name
