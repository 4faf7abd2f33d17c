"""Determinism on CPU: the same configuration and seed give the same bits, twice.

- training: one run in this process and one ``python -m ftbc train`` in a fresh
  one (1 thread each) write byte-identical ``model.safetensors``; another seed
  does not;
- conversion: two ``convert(...)`` calls of ``ftbc_relu`` give bit-identical
  thresholds, FTBC biases, accuracies and spike counts, whatever the global RNG
  did in between; another calibration seed does not;
- calibration images: drawn by a seeded sampler that neither the global RNG nor
  the number of data loader workers can change.

Data: random 32x32 PNGs in the CIFAR-10 class folders (8 train, 2 test a class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_imagefolder
from conftest import cli_env, torch_threads, write_cifar10_tree
from safetensors.torch import load_file
from torch.utils.data import Subset

from baselines import get_method
from ftbc.snn.conversion import Converted, convert
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.data.draws import calibration_batches, calibration_indices
from ftbc.data.loaders import make_loader
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc.run.evaluation import evaluate_snn
from ftbc.data.eval_sets import load_eval_data
from ftbc.snn.neuron import IFNeuron
from ftbc.train.recipes import load_recipe
from ftbc.snn.simulation import simulate
from ftbc.train.training import apply_overrides, train
from ftbc.models.checkpoint import load_model

EPOCHS, BATCH = 1, 16
# ftbc_relu with calibration sizes an 80-image training split can feed.
SMALL = {"threshold_batches": 2, "threshold_batch_size": 8, "threshold_positions": 256,
         "ftbc.iterations": 2, "ftbc.batches": 2, "ftbc.batch_size": 8}
T = 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism") / "cifar10-jpeg"
    return write_cifar10_tree(root, train_per_class=8, test_per_class=2)


def _train_here(tree: Path, out: Path, seed: int) -> Path:
    """One training run in this process, on one thread (as the subprocess runs)."""
    with torch_threads(1):
        recipe = apply_overrides(load_recipe("quick_cpu"), epochs=EPOCHS, batch_size=BATCH)
        train(dataset="cifar10", data_root=tree, arch="vgg_small", act="relu", recipe=recipe, seed=seed, out=out,
              progress=False)
    return out


def _train_cli(tree: Path, out: Path, seed: int) -> Path:
    """The same run as ``python -m ftbc train`` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "ftbc", "train", "--dataset", "cifar10", "--data-root", str(tree), "--arch",
           "vgg_small", "--act", "relu", "--recipe", "quick_cpu", "--epochs", str(EPOCHS), "--batch-size",
           str(BATCH), "--seed", str(seed), "--out", str(out), "--quiet"]
    env = cli_env()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def runs(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders: 'here' and 'cli' with seed 0, 'other' with seed 1."""
    tmp = tmp_path_factory.mktemp("runs")
    return {"here": _train_here(tree, tmp / "here", 0), "cli": _train_cli(tree, tmp / "cli", 0),
            "other": _train_here(tree, tmp / "other", 1)}


def _meta(run: Path) -> dict:
    return json.loads((run / "model.json").read_text())


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# -- training ---------------------------------------------------------------------------------

def test_training_twice_gives_bit_identical_weights(runs: dict[str, Path]) -> None:
    here, cli = runs["here"], runs["cli"]
    assert (here / "model.safetensors").read_bytes() == (cli / "model.safetensors").read_bytes()
    assert _meta(here)["sha256"] == _meta(cli)["sha256"]
    assert _same_tensors(load_file(str(here / "model.safetensors")), load_file(str(cli / "model.safetensors")))
    for key in ("train_loss", "train_acc", "test_acc"):
        assert _meta(here)["metrics"][key] == _meta(cli)["metrics"][key]


def test_another_seed_gives_other_weights(runs: dict[str, Path]) -> None:
    """The check above can fail: the seed reaches the weights."""
    a, b = load_file(str(runs["here"] / "model.safetensors")), load_file(str(runs["other"] / "model.safetensors"))
    assert not _same_tensors(a, b)


# -- conversion ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_data(tree: Path):
    """(calibration split, test batches) exactly as ``ftbc evaluate`` loads them."""
    calib, _, test_batches = load_eval_data("cifar10", str(tree), download=False, holdout=0, n_test=0,
                                            batch_size=BATCH)
    return calib, test_batches


def _convert(run: Path, eval_data, *, seed: int, rng_noise: int) -> dict:
    """Load the ANN, move the global RNG, convert + calibrate with ftbc_relu, evaluate at t = 1..T.

    Returns the conversion, the accuracy [T], the per-layer activity table and
    the SNN's outputs [T, N, 10] on the whole test split.
    """
    calib, test_batches = eval_data
    model, meta = load_model(run)
    torch.manual_seed(rng_noise)
    torch.rand(rng_noise + 1)
    method = get_method("ftbc_relu", meta["dataset"]).with_overrides(SMALL)
    conv = convert(model, method, data=calib, T=T, seed=seed)
    acc, activity = evaluate_snn(conv.snn, test_batches, T)
    with torch.no_grad():
        outputs = torch.cat([simulate(conv.snn, x, T) for x, _ in test_batches], dim=1)
    return dict(conv=conv, acc=acc, activity=activity, outputs=outputs)


def _neuron_values(conv: Converted) -> dict[str, torch.Tensor]:
    """Every spiking layer's threshold and FTBC bias."""
    out = {}
    for name, m in conv.snn.named_modules():
        if isinstance(m, IFNeuron):
            out[f"{name}.threshold"] = m.threshold.clone()
            out[f"{name}.bias"] = m.bias.clone()
    return out


@pytest.fixture(scope="module")
def conversions(runs: dict[str, Path], eval_data) -> dict[str, dict]:
    """Two conversions with seed 0 (different global RNG states) and one with seed 1."""
    return {"first": _convert(runs["here"], eval_data, seed=0, rng_noise=1),
            "second": _convert(runs["here"], eval_data, seed=0, rng_noise=2),
            "seed1": _convert(runs["here"], eval_data, seed=1, rng_noise=1)}


def test_conversion_twice_gives_bit_identical_thresholds_biases_and_accuracy(conversions) -> None:
    a, b = conversions["first"], conversions["second"]
    va, vb = _neuron_values(a["conv"]), _neuron_values(b["conv"])
    biases = [v for k, v in va.items() if k.endswith(".bias")]
    assert len(biases) >= 6 and all(x.shape[0] == T for x in biases)
    assert any(x.abs().sum() > 0 for x in biases), "FTBC did not run: every bias is zero"
    assert _same_tensors(va, vb)
    assert _same_tensors(a["conv"].snn.state_dict(), b["conv"].snn.state_dict())
    assert a["acc"].shape == (T,) and torch.equal(a["acc"], b["acc"])
    assert a["activity"].equals(b["activity"])  # spikes and synaptic operations per layer and step, exactly
    assert torch.equal(a["outputs"], b["outputs"])  # every output at every step, not only the top-1 count


def test_another_calibration_seed_gives_other_thresholds_and_outputs(conversions) -> None:
    """The check above can fail: the calibration seed reaches thresholds, biases and outputs."""
    a, c = conversions["first"], conversions["seed1"]
    assert not _same_tensors(_neuron_values(a["conv"]), _neuron_values(c["conv"]))
    assert not torch.equal(a["outputs"], c["outputs"])


# -- calibration images ----------------------------------------------------------------------

def test_calibration_indices_depend_on_the_seed_only() -> None:
    draws = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        draws.append(calibration_indices(80, 16, seed=0))
    assert draws[0] == draws[1] and len(set(draws[0])) == 16
    assert calibration_indices(80, 16, seed=1) != draws[0]


def test_calibration_batches_do_not_depend_on_loader_workers(tree: Path) -> None:
    """The seeded draw fetched by loaders with 0 and 2 workers gives the very batches convert() uses."""
    calib = load_split("cifar10", tree, "train", transform=build_transform("cifar10", train=False))
    drawn = calibration_batches(calib, n_batches=2, batch_size=8, seed=0)
    picked = Subset(calib, calibration_indices(len(calib), 16, seed=0))
    for workers in (0, 2):
        loaded = [x for x, _ in make_loader(picked, 8, shuffle=False, seed=0, num_workers=workers)]
        assert len(loaded) == 2 and all(torch.equal(a, b) for a, b in zip(drawn, loaded)), workers


def test_shuffled_loader_order_does_not_depend_on_workers(tree: Path) -> None:
    data = load_split("cifar10", tree, "train")
    orders = []
    for workers in (0, 2):
        orders.append(torch.cat([x for x, _ in make_loader(data, 8, shuffle=True, seed=3, num_workers=workers)]))
    assert torch.equal(orders[0], orders[1])
    other = torch.cat([x for x, _ in make_loader(data, 8, shuffle=True, seed=4)])
    assert not torch.equal(orders[0], other)


def test_augmented_calibration_batches_repeat_under_any_global_rng(tree: Path) -> None:
    """Even with a random (training) transform, the same seed gives the same batches."""
    data = load_split("cifar10", tree, "train", transform=build_transform("cifar10", train=True))
    draws = []
    for noise in (5, 6):
        torch.manual_seed(noise)
        draws.append(calibration_batches(data, n_batches=2, batch_size=8, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(*draws))
    other = calibration_batches(data, n_batches=2, batch_size=8, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(draws[0], other))
