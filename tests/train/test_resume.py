"""Per-epoch state, resume after SIGKILL, non-finite losses and time-budgeted epochs (tiny CIFAR tree, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_imagefolder
from conftest import cli_env, torch_threads, write_cifar10_tree
from safetensors.torch import load_file

from ftbc import cli
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.errors import TrainingError
from ftbc.train.recipes import load_recipe
from ftbc.data.distributed import DistEnv
from ftbc.train.time_budget import epochs_in_budget, resize_for_budget
from ftbc.train.training import apply_overrides, train
from ftbc.train.loop import train_one_epoch

# One thread everywhere: the in-process reference and the subprocesses then run the same kernels bit for bit.
# (cli_env() in each test: read at import, the environment would miss the run's private FTBC_CACHE)


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> Path:
    """Random 32x32 PNGs in CIFAR-10 class folders: 20 train and 4 test images per class."""
    root = tmp_path_factory.mktemp("resume") / "cifar10-jpeg"
    return write_cifar10_tree(root, train_per_class=20, test_per_class=4)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data-root", str(data), "--arch", "vgg_small", "--epochs", "4", "--batch-size", "32",
            "--out", str(out), "--quiet", *extra]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(cifar_tree, tmp_path):
    ref = tmp_path / "ref"
    with torch_threads(1):
        assert cli.main(_argv(cifar_tree, ref)) == 0
    assert not (ref / "last.json").exists() and not list(ref.glob("last-epoch*"))  # dropped when finished

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ftbc", *_argv(cifar_tree, out)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = out / "last.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    saved = json.loads(state.read_text())
    assert 1 <= saved["epoch"] < 4 and saved["epochs"] == 4, "the run was not stopped mid-way"
    assert not (out / "model.safetensors").exists()
    assert (out / saved["weights"]).is_file() and "rng/data" in load_file(str(out / saved["weights"]))

    changed = subprocess.run([sys.executable, "-m", "ftbc", *_argv(cifar_tree, out, "--lr", "0.05")], env=cli_env(),
                             capture_output=True, text=True)
    assert changed.returncode == 2 and "differs in: recipe" in changed.stderr

    again = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming {out} after epoch {saved['epoch']}/4" in again.stdout
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta_ref, meta = (json.loads((d / "model.json").read_text()) for d in (ref, out))
    assert meta["metrics"]["train_loss"] == meta_ref["metrics"]["train_loss"]
    assert not state.exists() and not list(out.glob("last-epoch*"))


class _NaNAt(torch.nn.Module):
    """Logits from a linear layer, NaN from the ``bad``-th call (0-based) on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.fc, self.calls, self.bad = torch.nn.Linear(4, 3), 0, bad

    def forward(self, x):
        out = self.fc(x)
        self.calls += 1
        return out * float("nan") if self.calls > self.bad else out


@pytest.mark.parametrize("check_every", [1, 2])
def test_non_finite_loss_names_epoch_and_step(check_every):
    """Checked every step (CPU) or every 2nd (as a GPU defers it): the first bad step is reported."""
    model = _NaNAt(bad=2)
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 7, step 3 of 4"):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), opt, batches, "cpu", progress=False, epoch=7,
                        check_every=check_every)
    assert model.calls == 2 + check_every  # stopped at the first check after the bad step


def test_diverging_training_stops_with_one_line_and_no_checkpoint(cifar_tree, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert cli.main(_argv(cifar_tree, out, "--lr", "1e30")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training diverged" in err
    assert "at epoch 1, step" in err and "of 7" in err
    assert not (out / "model.safetensors").exists()


def test_time_budget_sizes_the_epochs_from_the_first_and_only_shrinks_later():
    def size(times, n_epochs, budget=10.0):
        return resize_for_budget(times, budget, n_epochs, len(times) - 1, {"epochs": 100}, DistEnv(), "cpu",
                                 lambda *a: None)

    assert epochs_in_budget(2.0, 9.0, 100) == 4 and epochs_in_budget(2.0, 1.0, 100) == 1
    assert epochs_in_budget(0.5, 1000.0, 6) == 6
    assert size([2.0], 100) == 5  # after epoch 1: 10 s / 2 s
    assert size([2.0, 2.1], 5) == 5  # 5 x 2.05 s is within 10 % of the budget
    assert size([1.0, 3.0, 3.0], 10) == 4  # mean 2.33 s: 4 epochs fit; never more than planned
    assert size([1.0, 9.0, 9.0], 10) == 3  # never fewer than the epochs done


def test_time_budget_run_records_the_chosen_epochs(cifar_tree, tmp_path):
    recipe = apply_overrides(load_recipe("quick_cpu"), epochs=3, batch_size=100)
    m = train(dataset="cifar10", data_root=cifar_tree, arch="vgg_small", recipe=recipe, out=tmp_path / "b",
              time_budget_s=1e-3, progress=False, log=lambda *a: None)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert len(m["train_loss"]) == 1 and meta["epochs"] == 1 and meta["recipe"]["epochs"] == 1
    assert meta["time_budget_s"] == 1e-3 and meta["amp"] is False and meta["world_size"] == 1
