"""scripts/gpu_reproduce.sh in its CPU setting (--tiny, shrunk further) on a synthetic CIFAR-10 archive.

The GPU run itself cannot run here; this runs every one of its steps (archive
-> three ANNs sized by time -> every method at every T -> tables, timings,
hardware) so that the script cannot rot between GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, write_imagefolder
from conftest import write_cifar10_tree

from baselines import get_method, list_methods
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.errors import UserError
from ftbc.run.reproduce import SETTINGS, budgeted, find_data, prepare_data

SCRIPT = REPO_ROOT / "scripts" / "gpu_reproduce.sh"


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory):
    """cifar10-jpeg.tar.gz of random PNGs: 12 train and 6 test images per class."""
    base = tmp_path_factory.mktemp("archive")
    tree = base / "cifar10-jpeg"
    write_cifar10_tree(tree, train_per_class=12, test_per_class=6)
    archive = base / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    return archive


def test_prepare_data_takes_a_per_class_subset(cifar_archive, tmp_path):
    root = prepare_data(cifar_archive, tmp_path / "a", train_per_class=3, test_per_class=2)
    assert len(list((root / "train").rglob("*.png"))) == 30 and len(list((root / "test").rglob("*.png"))) == 20
    again = prepare_data(root, tmp_path / "b", train_per_class=2, test_per_class=None)
    assert len(list((again / "train").rglob("*.png"))) == 20 and len(list((again / "test").rglob("*.png"))) == 20
    assert prepare_data(root, tmp_path / "c") == root  # a whole folder is used in place
    with pytest.raises(UserError, match="no CIFAR-10 copy"):
        find_data(None, tmp_path)


def test_budgeted_keeps_release_batches_and_caps_ftbc_images():
    method, changes = budgeted(get_method("ftbc_relu", "cifar10"), n_train=50000,
                               ftbc_images=SETTINGS["gpu"]["ftbc_images"], wc_iterations=500, mse_positions=None)
    stage = method.stage("ftbc").params
    assert (stage["batches"], stage["batch_size"], stage["iterations"]) == (5, 128, 10)  # 100 in the release
    assert "threshold_positions" not in changes and method.threshold_batches == 7
    same, _ = budgeted(get_method("qcfs", "cifar10"), n_train=50000, ftbc_images=6400, wc_iterations=500,
                       mse_positions=None)
    assert same == get_method("qcfs", "cifar10")


def test_gpu_reproduce_tiny_runs_every_step(cifar_archive, tmp_path):
    out = tmp_path / "out"
    T_max, budget = 2, 45
    cmd = ["bash", str(SCRIPT), str(out), "--tiny", "--data", str(cifar_archive), "--train-per-class", "12",
           "--test-per-class", "6", "--T-max", str(T_max), "--budget", str(budget)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script sets it to the checkout
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("table.md", "table.csv", "accuracy.csv", "timings.json", "hardware.json", "command.txt", "log.txt"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "anns").iterdir()) == ["clip.json", "qcfs.json", "relu.json"]
    assert not list(out.rglob("*.safetensors")), "weights stay in the work folder"
    assert "training vgg_small (relu)" in (out / "log.txt").read_text()

    timings = json.loads((out / "timings.json").read_text())
    for act, rec in timings["train"].items():
        assert rec["epochs"] >= 1 and rec["first_epoch_s"] > 0 and rec["arch"] == "vgg_small", act
    hw = json.loads((out / "hardware.json").read_text())
    assert hw["device"] == "cpu" and hw["torch"] == torch.__version__  # the subprocess runs this interpreter's torch
    assert hw["cpu_count"] == os.cpu_count()  # the same machine as this process

    names = timings["evaluation"]["methods"]  # the subprocess's registry: built-in methods only
    assert set(names) <= set(list_methods()) and {"maxnorm", "opi", "snnc_light", "snnc_advanced", "qcfs", "rts",
                                                   "ftbc_relu", "ftbc_qcfs", "ftbc_rts"} <= set(names)
    t_free = [n for n in names if not get_method(n, "cifar10").t_dependent]
    expected = {(n, T_max) for n in t_free} | {(n, T) for n in names if n not in t_free for T in (1, 2)}
    done = {(r["method"], r["T"]) for r in timings["evaluation"]["runs"]}
    skipped = {(r["method"], r["T"]) for r in timings["evaluation"]["skipped"]}
    assert done | skipped == expected and not done & skipped and done
    assert timings["total_s"] < budget + 60  # the last run may overshoot the deadline; it is not cut

    acc = pd.read_csv(out / "accuracy.csv")
    # 6 test images in each of the 10 classes: every accuracy (SNN and ANN) is k / 60 in percent, k = 0..60
    n_test = 6 * 10
    for col in ("accuracy", "ann_accuracy"):
        k = acc[col] * n_test / 100
        assert ((k - k.round()).abs() < 1e-6).all() and k.between(0, n_test).all(), acc[col].tolist()
    anns = {a: json.loads((out / "anns" / f"{a}.json").read_text()) for a in ("relu", "qcfs", "clip")}
    for act, meta in anns.items():  # the ANN accuracy each row repeats is its ANN's test accuracy from training
        assert set(acc.loc[acc["activation"] == act, "ann_accuracy"]) == {meta["metrics"]["test_acc"]}, act
    for name, T in done:
        rows = acc[(acc["method"] == name) & (acc["T_run"] == T)]
        assert sorted(rows["t"]) == (list(range(1, T_max + 1)) if name in t_free else [T]), name
    table = pd.read_csv(out / "table.csv", index_col=0)
    assert len(table) == len({n for n, _ in done}) and list(table.columns) == [str(t) for t in range(1, T_max + 1)]
