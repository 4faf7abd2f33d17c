"""config/ftbc-solvers.yaml plans the evaluations whose outputs are committed under results/ftbc_solvers/:
each ``ftbc evaluate`` command of its dry run carries the settings that each committed ``run.yaml`` records."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from baselines.budgets import budget_overrides, resolve_method
from ftbc.options import parse_overrides, parse_T
from ftbc.run.evaluation import get_args_parser

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "results" / "ftbc_solvers"
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")

# the options that decide what a run computes (--out, --quiet and the like do not)
SAME = ("method", "n_test", "holdout", "seed", "test_seed", "calibration_transform", "batch_size", "device",
        "data_root", "mode", "workers")


def runs_of(method: str, T: str) -> list[int]:
    """The simulations ftbc evaluate makes for ``--T``: a T-free method one run to the largest T."""
    Ts = parse_T(T)
    return Ts if resolve_method(method, "cifar10").t_dependent else [max(Ts)]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("solvers")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", "config/ftbc-solvers.yaml",
                        "--config", f"workdir={tmp}/w", f"results={tmp}/t", "data_root=data/cifar10-jpeg"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_each_evaluate_command_carries_the_committed_runs_settings(dry_run):
    commands = [shlex.split(line.split("ftbc evaluate", 1)[1].split(">")[0])
                for line in dry_run.splitlines() if "ftbc evaluate " in line]
    planned = {a.method: a for a in map(get_args_parser().parse_args, commands)}
    recorded = {d.name: yaml.safe_load((d / "run.yaml").read_text()) for d in sorted(RECORD.glob("*_T4"))}
    assert len(recorded) == 6 and len(planned) == len(commands) == 6
    assert set(planned) == {r["method"] for r in recorded.values()}
    for folder, rec in recorded.items():
        new = planned[rec["method"]]
        assert {k: getattr(new, k) for k in SAME} == {k: rec[k] for k in SAME}, folder
        assert runs_of(new.method, new.T) == runs_of(rec["method"], rec["T"]) == [4], folder
        # the committed runs passed --set threshold_positions=16384 to the ReLU methods: budget cpu_mse, by name
        assert new.budget == "cpu_mse" and not new.overrides, folder
        assert budget_overrides("cpu_mse", new.method) == parse_overrides(rec["overrides"]), folder
        # the same ANNs: runs/all-methods/ann_<act> was the copy of results/cifar10-small-all-methods/ann_<act>
        ckpt = Path(new.checkpoint)
        assert ckpt.parent.parent == Path("results/cifar10-small-all-methods"), folder
        assert ckpt.parent.name == Path(rec["checkpoint"]).name and (ROOT / ckpt).is_file(), folder


def test_the_tables_rule_writes_the_iteration_curves(dry_run):
    tables = [line for line in dry_run.splitlines() if line.startswith("Shell command: ftbc tables ")]
    assert len(tables) == 1 and tables[0].count("/result.json") == 6 and "--T 4 " in tables[0]
    assert "iterations.csv" in dry_run and "figures/ftbc_iterations.png" in dry_run
