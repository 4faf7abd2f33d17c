"""The smoke grid run for real on the CIFAR-10 copy: tables produced, and reruns do only what they must.

One run of ``.test/config/config.yaml`` (every method, 3 ANNs, a slice of CIFAR-10), then:
nothing changed -> nothing to do; one method's setting changed -> only its jobs;
a run killed (SIGKILL) mid-grid -> the rerun keeps every finished job; a job that
fails -> the others' results stay and the rerun redoes only the failed one.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from baselines import list_methods

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")]


def _cmd(tmp, configfile, *extra):
    # run elsewhere than the checkout, so name the default profile (rerun-incomplete, keep-going)
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp),
            "--workflow-profile", str(ROOT / "workflow" / "profiles" / "default"),
            "--configfile", str(configfile), "--cores", "2", *extra]


def _run(tmp, configfile, *extra, check=True):
    r = subprocess.run(_cmd(tmp, configfile, *extra), capture_output=True, text=True, timeout=1800)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _planned(tmp, configfile) -> dict[str, int]:
    out = _run(tmp, configfile, "-n").stdout
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}


def _config(tmp, data_root, **changes):
    c = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    c.update(data_root=str(data_root), workdir=str(tmp / "work"), results=str(tmp / "tables"),
             published=str(ROOT / "results" / "published" / "published_results.csv"))
    for method, settings in changes.items():
        c["method_settings"][method] = {**c["method_settings"].get(method, {}), **settings}
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(c))
    return path


def _restore(tmp, configfile) -> None:
    """Bring the shared smoke folder back to the finished grid of ``configfile`` (a run that does nothing unless
    an earlier test changed the folder): each test starts from that state, whichever tests ran before it."""
    _run(tmp, configfile)


def _results(tmp) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (tmp / "work" / "snn").rglob("result.json")}


def _method_of(result: Path) -> str:
    """The method of ``.../<method>/cal<seed>/T<steps>/result.json``."""
    return result.parents[2].name


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cifar10_root):
    reuse = os.environ.get("FTBC_SMOKE_REUSE")  # developers: a finished smoke folder to rerun the checks on
    if reuse:
        return Path(reuse), sorted(Path(reuse).glob("config-*.yaml"))[0]
    tmp = tmp_path_factory.mktemp("smoke")
    cfg = _config(tmp, cifar10_root)
    t0 = time.perf_counter()
    _run(tmp, cfg)
    print(f"\nsmoke grid: {time.perf_counter() - t0:.0f} s")
    return tmp, cfg


def test_smoke_grid_produces_every_method_at_every_T(smoke):
    tmp, cfg = smoke
    _restore(tmp, cfg)
    acc = pd.read_csv(tmp / "tables" / "accuracy.csv")
    assert sorted(acc["method"].unique()) == sorted(list_methods())
    assert set(acc["T"]) >= {1, 2, 4}
    # config/smoke.yaml tests on 30 images in each of the 10 classes (n_test 0: all of them): every accuracy
    # (SNN and ANN) is k / 300 in percent, k = 0..300
    k = acc[["accuracy", "ann_accuracy"]] * 300 / 100
    assert ((k - k.round()).abs() < 1e-6).all().all() and (k >= 0).all().all() and (k <= 300).all().all()
    assert (tmp / "tables" / "cifar10.md").read_text().count("| vgg_small |") == len(list_methods())
    assert (tmp / "tables" / "figures" / "cifar10_vgg_small_accuracy.png").stat().st_size > 10_000


def test_report_gathers_tables_and_figures(smoke):
    tmp, cfg = smoke
    _restore(tmp, cfg)
    _run(tmp, cfg, "--report", str(tmp / "report.html"))
    html = (tmp / "report.html").read_text(errors="replace")
    assert "accuracy.csv" in html and "cifar10_vgg_small_accuracy.png" in html


def test_nothing_changed_means_nothing_to_do(smoke):
    tmp, cfg = smoke
    _restore(tmp, cfg)  # the two tests below leave the folder at other settings
    assert _planned(tmp, cfg) == {}


def test_one_method_setting_reruns_only_that_method(smoke, cifar10_root):
    tmp, base = smoke
    _restore(tmp, base)  # otherwise snnc_light's or rts's jobs from the tests below would be planned too
    cfg = _config(tmp, cifar10_root, ftbc_rts={"ftbc.iterations": 3})
    # ftbc_rts depends on T: one job per T of the smoke grid (1, 4), then the tables
    assert _planned(tmp, cfg) == {"evaluate_snn": 2, "tables": 1, "all": 1}


def test_a_killed_run_continues_without_redoing_finished_jobs(smoke, cifar10_root):
    tmp, base = smoke
    _restore(tmp, base)  # exactly snnc_light's 2 jobs to redo, whichever tests ran before
    cfg = _config(tmp, cifar10_root, snnc_light={"threshold_positions": 512})
    before = _results(tmp)
    proc = subprocess.Popen(_cmd(tmp, cfg, "--cores", "1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:  # kill between jobs: as soon as Snakemake has registered the first of the three as finished
        for line in proc.stdout:
            if re.search(r"Finished jobid: \d+ \(Rule: evaluate_snn\)", line):
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p: m for p, m in _results(tmp).items() if m != before.get(p)}
    assert len(finished) == 1, "the kill should land after the first job and before the second finished"
    assert len([p for p in before if _method_of(p) == "snnc_light"]) == 2  # T = 1 and 4
    _run(tmp, cfg, "--unlock")  # SIGKILL leaves Snakemake's lock behind (Ctrl-C or SIGTERM would not)
    _run(tmp, cfg)
    after = _results(tmp)
    assert all(after[p] == m for p, m in finished.items()), "a finished job was redone"
    assert sum(after[p] != before.get(p) for p in after) == 2
    assert _planned(tmp, cfg) == {}


def test_a_failing_job_leaves_the_others_and_only_it_is_redone(smoke, cifar10_root):
    tmp, base = smoke
    _restore(tmp, base)  # exactly the jobs of rts and ftbc_rts change below, whichever tests ran before
    # 40 x 128 threshold images cannot come from a 1,500-image slice: the two jobs of rts
    # (T = 1, 4) fail at run time with a clear DataError; the two of ftbc_rts change and succeed.
    bad = _config(tmp, cifar10_root, rts={"threshold_batches": 40}, ftbc_rts={"ftbc.iterations": 1})
    before = _results(tmp)
    r = _run(tmp, bad, check=False)
    assert r.returncode != 0
    log = "\n".join(p.read_text() for p in (tmp / "logs").rglob("evaluate_snn/**/rts/cal*/T*.log"))
    assert "calibration needs 5120 images" in log and "Traceback" not in log
    changed = {p for p, m in _results(tmp).items() if m != before.get(p)}
    names = {_method_of(p) for p in changed}
    assert "ftbc_rts" in names and "rts" not in names  # the independent jobs finished, the failed left nothing
    fixed = _config(tmp, cifar10_root, ftbc_rts={"ftbc.iterations": 1})
    assert _planned(tmp, fixed) == {"evaluate_snn": 2, "tables": 1, "all": 1}  # the 2 rts jobs only
