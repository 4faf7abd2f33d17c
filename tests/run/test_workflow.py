"""The Snakemake workflow: lint, snakefmt, the test configurations of .test/ against the schema, the job grid
of each shipped configuration, configuration errors, no plotting library imported while the DAG is built."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args, cwd=ROOT, python_flags=()):
    return subprocess.run([sys.executable, *python_flags, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_lint_reports_nothing():
    r = snakemake("--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def test_workflow_files_are_snakefmt_formatted():
    """snakefmt --check over the Snakefile and workflow/ (line length: [tool.snakefmt] of pyproject.toml).
    To fix a failure: ``snakefmt Snakefile workflow``."""
    pytest.importorskip("snakefmt", reason="snakefmt is not installed (pip install -e '.[test]')")
    r = subprocess.run([sys.executable, "-m", "snakefmt", "--config", "pyproject.toml", "--check", "--diff",
                        "Snakefile", "workflow"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"not snakefmt-formatted; run `snakefmt Snakefile workflow`:\n{r.stdout}{r.stderr}"


def _test_configurations():
    """Each complete configuration of .test/ (a config.yaml), then each other YAML file beside it as an overlay
    on it, merged as ``--configfile config.yaml overlay.yaml`` merges them."""
    cases = []
    for base in sorted((ROOT / ".test").rglob("config.yaml")):
        cases.append((base,))
        cases += [(base, overlay) for overlay in sorted(base.parent.glob("*.yaml")) if overlay != base]
    return cases


TEST_CONFIGURATIONS = _test_configurations()


def test_there_are_test_configurations_and_the_old_smoke_path_still_works():
    assert (ROOT / ".test" / "config" / "config.yaml",) in TEST_CONFIGURATIONS
    # config/smoke.yaml (the smoke grid's former place, in user-facing commands) is a link to it
    assert (ROOT / "config" / "smoke.yaml").read_text() == (ROOT / ".test" / "config" / "config.yaml").read_text()


@pytest.mark.parametrize("files", TEST_CONFIGURATIONS,
                         ids=["+".join(str(f.relative_to(ROOT)) for f in fs) for fs in TEST_CONFIGURATIONS])
def test_test_configurations_follow_the_schema(files):
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config, validate

    config = {}
    for f in files:
        update_config(config, yaml.safe_load(f.read_text()))
    try:
        validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"), set_default=False)
    except WorkflowError as e:
        pytest.fail(f"{' + '.join(map(str, files))} does not follow the schema: {e}")


@pytest.mark.parametrize("configfile, expected", [
    # 3 data sets; 7 CIFAR ANNs x 3 seeds x 2 data sets + 5 ImageNet ANNs (VGG-16 with ReLU and QCFS);
    # evaluations: per ReLU ANN 2 T-free methods (maxnorm, opi) + 5 T-dependent (snnc_none, snnc_light,
    # snnc_advanced, ftbc_relu, ftbc_relu_quantile) x 9 T = 47, per QCFS ANN 3 T-free = 3, per
    # clipped-ReLU ANN 3 T-dependent x 9 = 27:
    # CIFAR (2 x 3 x 47 + 3 x 3 x 3 + 2 x 3 x 27) x 2 = 942, ImageNet 47 x 2 + 3 x 2 + 27 = 127.
    ("config/paper.yaml", {"prepare_data": 3, "train_ann": 47, "evaluate_snn": 1069, "tables": 1, "all": 1}),
    # the smoke grid (.test/) has the same shape with T = 1,4: 2 + 5 x 2 + 3 + 3 x 2 = 21
    (".test/config/config.yaml", {"prepare_data": 1, "train_ann": 3, "evaluate_snn": 21, "tables": 1, "all": 1}),
    # CI's SLURM stage: the overlay keeps one ReLU ANN and maxnorm (T-free), snnc_light and ftbc_relu (T = 1,4)
    (".test/config/config.yaml .test/config/slurm.yaml",
     {"prepare_data": 1, "train_ann": 1, "evaluate_snn": 5, "tables": 1, "all": 1}),
])
def test_dry_run_job_counts(configfile, expected, tmp_path):
    r = snakemake("-n", "--configfile", *configfile.split(), "--config", f"workdir={tmp_path}/w",
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


def test_building_the_dag_imports_no_plotting_library(tmp_path):
    """The DAG needs the figures' file names (ftbc.report.naming.figure_name), not matplotlib: a dry run of the smoke grid
    under ``python -X importtime`` imports ftbc.run.grid and neither matplotlib nor ftbc.report.plots."""
    r = snakemake("-n", "--configfile", ".test/config/config.yaml", "--config", f"workdir={tmp_path}/w",
                  f"results={tmp_path}/t", python_flags=("-X", "importtime"))
    assert r.returncode == 0, r.stdout + r.stderr
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)\s*$", r.stderr, re.M)
    assert "ftbc.run.grid" in imported, "the import trace does not show the workflow's own imports"
    plotting = [m for m in imported if m.split(".")[0] == "matplotlib" or m == "ftbc.report.plots"]
    assert not plotting, f"building the DAG imported {', '.join(plotting[:5])}"
