"""The Snakemake workflow: lint, the job grid of each shipped configuration, configuration errors."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_lint_reports_nothing():
    r = snakemake("--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


@pytest.mark.parametrize("configfile, expected", [
    # 3 data sets; 7 CIFAR ANNs x 3 seeds x 2 data sets + 5 ImageNet ANNs (VGG-16 with ReLU and QCFS);
    # evaluations: per ReLU ANN 2 T-free methods (maxnorm, opi) + 5 T-dependent (snnc_none, snnc_light,
    # snnc_advanced, ftbc_relu, ftbc_relu_quantile) x 9 T = 47, per QCFS ANN 3 T-free = 3, per
    # clipped-ReLU ANN 3 T-dependent x 9 = 27:
    # CIFAR (2 x 3 x 47 + 3 x 3 x 3 + 2 x 3 x 27) x 2 = 942, ImageNet 47 x 2 + 3 x 2 + 27 = 127.
    ("config/paper.yaml", {"prepare_data": 3, "train_ann": 47, "evaluate_snn": 1069, "tables": 1, "all": 1}),
    # the smoke grid has the same shape with T = 1,4: 2 + 5 x 2 + 3 + 3 x 2 = 21
    ("config/smoke.yaml", {"prepare_data": 1, "train_ann": 3, "evaluate_snn": 21, "tables": 1, "all": 1}),
])
def test_dry_run_job_counts(configfile, expected, tmp_path):
    r = snakemake("-n", "--configfile", configfile, "--config", f"workdir={tmp_path}/w",
                  f"results={tmp_path}/t")
    assert r.returncode == 0, r.stdout + r.stderr
    assert job_counts(r.stdout) == {**expected, "total": sum(expected.values())}
    if "paper" in configfile:  # GPUs on every heavy rule: 8 for ImageNet training, 1 elsewhere
        assert re.search(r"rule train_ann:(?:\n    .*)*\n    resources: .*gpu=8", r.stdout)
        assert re.search(r"rule evaluate_snn:(?:\n    .*)*\n    resources: .*gpu=1", r.stdout)


def fresh_copy(dest: Path) -> Path:
    """The files a clone of this checkout would have (tracked, plus new files git would add)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_the_default_grid_plans_its_jobs_in_a_fresh_clone(tmp_path):
    """No committed file stands in for the default grid's outputs: the README's command has work to do.
    The quick grid: one data set, 3 ANNs, T = 1,2,4,8,16,32: 2 + 5 x 6 + 3 + 3 x 6 = 53 evaluations."""
    r = snakemake("-n", "--cores", "1", cwd=fresh_copy(tmp_path / "clone"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert job_counts(r.stdout) == {"prepare_data": 1, "train_ann": 3, "evaluate_snn": 53, "tables": 1, "all": 1,
                                    "total": 59}


@pytest.mark.parametrize("override, message", [
    ("bogus=1", "invalid configuration: Additional properties are not allowed ('bogus' was unexpected)"),
    ("device=tpu", "invalid configuration at device: 'tpu' is not one of ['cpu', 'cuda']"),
    ("methods=[nosuch]", "unknown method(s) nosuch in the configuration; registered: maxnorm"),
    ("method_settings={snnc_lite: {threshold_positions: 4096}}",
     "method_settings names unknown method(s) snnc_lite; registered: maxnorm"),
])  # the other names grid.check rejects are tested in test_grid.py, without a Snakemake start each
def test_a_bad_configuration_fails_before_any_job_with_one_clear_line(override, message, tmp_path):
    r = snakemake("-n", "--config", override, f"workdir={tmp_path}/w")
    assert r.returncode != 0
    assert message in r.stdout + r.stderr
    assert not (tmp_path / "w").exists()
