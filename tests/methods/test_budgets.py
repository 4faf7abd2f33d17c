"""Named calibration budgets (baselines/budgets.py): the values each driver ran before budgets had names,
an unknown name, overrides on top, and the name in result.json."""

import json

import pytest
import torch
import yaml

from baselines import get_method, list_methods
from baselines.budgets import BUDGETS, budget_overrides, resolve_method
from conftest import write_imagefolder
from ftbc import models
from ftbc._io import save_checkpoint
from ftbc.cli import main as ftbc_main
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.errors import UserError
from ftbc.run import grid
from ftbc.run.evaluation import method_record
from ftbc.run.quickstart import quick_method, quick_methods

# config/config.yaml's method_settings before the grid named its budget (cpu_grid)
GRID_BEFORE = {
    "snnc_light": {"threshold_positions": 4096},
    "snnc_advanced": {"threshold_positions": 4096},
    "ftbc_relu": {"threshold_positions": 4096, "ftbc.iterations": 4, "ftbc.batches": 2},
    "ftbc_relu_quantile": {"threshold_positions": 4096, "ftbc.batches": 2},
    "ftbc_qcfs_quantile": {"ftbc.batches": 2},
    "rts": {"threshold_batches": 40},
    "ftbc_rts": {"ftbc.iterations": 10},
    "ftbc_rts_quantile": {"ftbc.batches": 2},
}


def test_every_budget_names_registered_methods_and_settings_they_have():
    assert list(BUDGETS)[0] == "release" and BUDGETS["release"] == {}
    for budget, per_method in BUDGETS.items():
        for name in per_method:
            assert name in list_methods(), (budget, name)
            for dataset in ("cifar10", "imagenet"):
                resolve_method(name, dataset, budget)  # raises for a setting the method does not have


def test_release_changes_nothing():
    for name in list_methods():
        assert resolve_method(name, "cifar10", "release") == get_method(name, "cifar10")
        assert resolve_method(name, "cifar10", None) == get_method(name, "cifar10")


def test_cpu_grid_is_the_default_grids_former_settings():
    assert yaml.safe_load(open("config/config.yaml"))["budget"] == "cpu_grid"
    for name in list_methods():
        assert resolve_method(name, "cifar10", "cpu_grid") == \
            get_method(name, "cifar10").with_overrides(GRID_BEFORE.get(name, {})), name


def test_cpu_quick_cuts_what_the_quickstart_cut():
    # docs/methods.md: the FTBC release runs 100 iterations x 5 batches of 128 (ReLU, CIFAR), alpha 0.5
    release = get_method("ftbc_relu", "cifar10").stage("ftbc").params
    assert (release["iterations"], release["batches"], release["batch_size"]) == (100, 5, 128)
    relu = resolve_method("ftbc_relu", "cifar10", "cpu_quick")
    assert dict(relu.stage("ftbc").params) == dict(alpha=0.5, iterations=4, batches=2, batch_size=128)
    assert relu.threshold_positions == 16384
    rts = resolve_method("ftbc_rts", "cifar10", "cpu_quick").stage("ftbc").params
    assert dict(rts) == dict(alpha=0.005, iterations=4, batches=2, batch_size=32)
    assert resolve_method("rts", "cifar10", "cpu_quick").threshold_batches == 40
    assert resolve_method("snnc_light", "cifar10", "cpu_quick").threshold_positions == 16384
    for name in ("maxnorm", "opi", "snnc_none", "qcfs", "ftbc_qcfs", "ftbc_qcfs_quantile", "ftbc_rts_quantile"):
        assert resolve_method(name, "cifar10", "cpu_quick") == get_method(name, "cifar10"), name
    # the quickstart runs that budget; --ftbc-iterations replaces only the iterations it cuts
    assert quick_methods(["ftbc_relu", "ftbc_qcfs"]) == [relu, get_method("ftbc_qcfs", "cifar10")]
    assert quick_method("ftbc_relu", 7) == relu.with_overrides({"ftbc.iterations": 7})
    assert quick_method("ftbc_qcfs", 7) == get_method("ftbc_qcfs", "cifar10")


def test_an_unknown_budget_is_one_line_naming_the_known_ones():
    with pytest.raises(UserError) as e:
        resolve_method("ftbc_relu", "cifar10", "cpu_fast")
    msg = str(e.value)
    assert "\n" not in msg and "cpu_fast" in msg and all(b in msg for b in BUDGETS)
    with pytest.raises(UserError, match="unknown budget 'cpu_fast'"):
        grid.evaluations({"T": [1], "budget": "cpu_fast", "methods": ["maxnorm"],
                          "anns": [dict(dataset="cifar10", arch="vgg_small", activations=["relu"],
                                        recipe="quick_cpu")]})


def test_overrides_apply_on_top_of_the_budget():
    m = resolve_method("ftbc_relu", "cifar10", "cpu_grid", {"ftbc.iterations": 3, "channelwise": False})
    assert m.stage("ftbc").params["iterations"] == 3 and m.stage("ftbc").params["batches"] == 2
    assert m.threshold_positions == 4096 and m.channelwise is False
    assert budget_overrides("cpu_grid", "maxnorm") == {}
    # in the grid: the budget goes by name, method_settings on top
    c = {"T": [1, 2], "budget": "cpu_grid", "methods": ["ftbc_relu"],
         "method_settings": {"ftbc_relu": {"ftbc.iterations": 3}},
         "anns": [dict(dataset="cifar10", arch="vgg_small", activations=["relu"], recipe="quick_cpu")]}
    ev = grid.evaluations(c)[0]
    assert ev.budget == "cpu_grid" and ev.settings == (("ftbc.iterations", 3),)
    assert grid._method(ev.method, "cifar10", ev.settings, ev.budget) == m.with_overrides({"channelwise": True})


def test_the_result_records_the_budget(tmp_path):
    assert method_record(get_method("rts"), budget="cpu_smoke")["budget"] == "cpu_smoke"
    assert "budget" not in method_record(get_method("rts"))
    root = tmp_path / "data"
    write_imagefolder(root, classes=list(CIFAR_CLASSES["cifar10"]), per_class=2)
    torch.manual_seed(0)
    ann = models.create_model("vgg_small", num_classes=10, act_layer="clip")
    save_checkpoint(tmp_path / "ann" / "model.safetensors", ann.state_dict(),
                    dict(dataset="cifar10", arch="vgg_small", act="clip", act_kwargs={}, num_classes=10))
    common = ["--checkpoint", str(tmp_path / "ann"), "--method", "rts", "--T", "1", "--data-root", str(root),
              "--quiet", "--batch-size", "10"]
    assert ftbc_main(["evaluate", *common, "--budget", "nope", "--out", str(tmp_path / "x")]) == 2
    out = tmp_path / "out"
    assert ftbc_main(["evaluate", *common, "--budget", "cpu_smoke", "--set", "threshold_batch_size=4",
                      "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())["method"]
    assert record["budget"] == "cpu_smoke"
    assert (record["threshold_batches"], record["threshold_batch_size"]) == (2, 4)  # budget, then --set
