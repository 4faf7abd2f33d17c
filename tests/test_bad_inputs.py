"""Bad inputs through the real command line: one line on stderr, exit status 2, nothing left in --out.

Every case is a command line run in its own process on tiny synthetic data and
on checkpoints that are written, never trained. ``python -m ftbc`` spends about
3.5 s of CPU on imports, so the ``ftbc`` cases are forked from one interpreter
that imported the package once (``tests/_forked_cli.py``, which runs
``ftbc/__main__.py`` as ``-m`` does); two of them also run as plain
``python -m ftbc`` to show the two give the same status and message. The
workflow cases run ``snakemake -n``. A good run of the same inputs
(``good-evaluate``) shows that every failure comes from the one thing made bad.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_imagefolder
from conftest import cli_env

from ftbc import models
from ftbc._io import save_checkpoint, sha256_file, sidecar_path
from ftbc.data.catalog import CIFAR_CLASSES

# Calibration sizes a 20-image training split can feed: thresholds, then the FTBC stage.
SMALL = ("--set", "threshold_batches=1", "--set", "threshold_batch_size=4", "--set", "threshold_positions=64")
SMALL_FTBC = (*SMALL, "--set", "ftbc.batches=1", "--set", "ftbc.batch_size=4", "--set", "ftbc.iterations=1")
WORKERS = 2
# Cases also run as a plain ``python -m ftbc`` process, to compare with the forked run.
PLAIN = ("unknown-dataset", "ckpt-truncated")


@dataclass(frozen=True)
class Case:
    """One command and the words its error line must hold (``{root}`` is the test's folder)."""

    id: str
    argv: tuple[str, ...]
    words: tuple[str, ...]
    status: int = 2  # of an ftbc case: 0 for the good run (snakemake cases: any non-zero)
    snakemake: bool = False


def _train(data: str, *extra: str) -> tuple[str, ...]:
    return ("train", "--dataset", "cifar10", "--data-root", data, "--arch", "vgg_small", "--epochs", "1",
            "--quiet", *extra)


def _evaluate(ckpt: str, method: str, *extra: str, data: str = "{root}/c10") -> tuple[str, ...]:
    small = SMALL_FTBC if method.startswith("ftbc") else SMALL
    return ("evaluate", "--checkpoint", f"{{root}}/ckpt/{ckpt}", "--method", method, "--T", "2",
            "--data-root", data, "--quiet", *small, *extra)


CASES = [
    # names
    Case("unknown-command", ("nosuch",), ("unknown command 'nosuch'", "train", "evaluate", "tables")),
    Case("unknown-dataset", _train("{root}/c10", "--dataset", "mnist"),
         ("unknown dataset 'mnist'", "cifar10", "cifar100", "imagenet")),
    Case("unknown-arch", _train("{root}/c10", "--arch", "vgg_huge"),
         ("unknown architecture 'vgg_huge'", "vgg_small", "resnet20_qcfs")),
    Case("unknown-activation", _train("{root}/c10", "--act", "tanh"), ("--act", "'tanh'", "relu", "qcfs", "clip")),
    Case("unknown-method", _evaluate("relu", "nosuch"), ("unknown method 'nosuch'", "maxnorm", "ftbc_relu")),
    Case("unknown-stage-setting", _evaluate("relu", "ftbc_relu", "--set", "ftbc.nosuch=1"),
         ("ftbc_relu", "nosuch", "alpha", "iterations")),
    # values out of range
    Case("T-zero", _evaluate("relu", "maxnorm", "--T", "0"), ("T must be", "1..4096", "'0'")),
    Case("T-too-large", _evaluate("relu", "maxnorm", "--T", "5000"), ("T must be", "1..4096", "'5000'")),
    Case("alpha-negative", _evaluate("relu", "ftbc_relu", "--set", "ftbc.alpha=-1"),
         ("ftbc_relu", "0 < alpha <= 10", "alpha=-1")),
    Case("epochs-zero", _train("{root}/c10", "--epochs", "0"), ("--epochs", ">= 1", "got 0")),
    # data roots
    Case("data-missing", _train("{root}/nowhere"), ("nowhere does not exist", "train/<class>")),
    Case("data-empty", _evaluate("relu", "maxnorm", data="{root}/empty"), ("empty has no train/ folder",)),
    Case("data-flat", _train("{root}/flat"), ("flat has no train/ folder", "ImageFolder")),
    Case("data-3-classes", _train("{root}/c3"), ("3 class folders", "expected 10", "cifar10")),
    Case("data-class-names", _train("{root}/names"), ("class folder 'class0'", "cifar10")),
    # checkpoints that do not fit
    Case("ckpt-relu-for-qcfs", _evaluate("relu", "ftbc_qcfs"), ("ftbc_qcfs", "'qcfs' ANN", "'relu'", "--act qcfs")),
    Case("ckpt-cifar100-on-cifar10", _evaluate("c100", "maxnorm"), ("10 class folders", "expected 100", "cifar100")),
    Case("ckpt-other-arch", _evaluate("arch", "maxnorm"), ("does not fit", "resnet20_snnc")),
    Case("ckpt-other-classes", _evaluate("classes", "maxnorm"), ("does not fit", "vgg_small")),
    Case("ckpt-truncated", _evaluate("truncated", "maxnorm"), ("sha256", "model.json", "truncated or corrupted")),
    Case("ckpt-corrupted", _evaluate("corrupted", "maxnorm"), ("sha256", "model.json", "truncated or corrupted")),
    Case("ckpt-pickle", _evaluate("pickle", "maxnorm"), ("cannot be read as safetensors",)),
    # results of an older format
    Case("result-format-0", ("tables", "{root}/old"), ("result format 0", "reads (1,)", "rerun ftbc evaluate")),
    # workflow configuration
    Case("config-not-yaml", ("{root}/config/not-yaml.yaml",), ("Config file is not valid JSON or YAML",),
         snakemake=True),
    Case("config-T-zero", ("{root}/config/T-zero.yaml",),
         ("invalid configuration at T[0]", "0 is less than the minimum of 1"), snakemake=True),
    Case("config-bad-activation", ("{root}/config/activation.yaml",),
         ("invalid configuration at anns[0].activations[0]", "'tanh' is not one of"), snakemake=True),
    # the same inputs made good: evaluate writes its outputs
    Case("good-evaluate", _evaluate("relu", "ftbc_relu"), (), status=0),
]


# -- the inputs ----------------------------------------------------------------------------

def _write_trees(root: Path) -> None:
    """CIFAR-10 (2 images a class), 3 classes, wrong class names, an empty folder, images without splits."""
    cifar = list(CIFAR_CLASSES["cifar10"])
    write_imagefolder(root / "c10", classes=cifar, per_class=2)
    write_imagefolder(root / "c3", classes=3, per_class=2)
    write_imagefolder(root / "names", classes=10, per_class=1)
    (root / "empty").mkdir()
    write_imagefolder(root / "flat", classes=["images"], per_class=2, splits=("",))


def _meta(dataset: str, act: str, num_classes: int) -> dict:
    """The sidecar fields ``ftbc.models.checkpoint.load_model`` and ``ftbc evaluate`` read."""
    return dict(dataset=dataset, arch="vgg_small", act=act, act_kwargs={}, num_classes=num_classes)


def _save(root: Path, name: str, classes: int = 10, **meta) -> Path:
    """A vgg_small checkpoint with ``classes`` outputs; ``meta`` replaces sidecar fields."""
    torch.manual_seed(0)
    model = models.create_model("vgg_small", num_classes=classes, act_layer="relu")
    full = {**_meta("cifar10", "relu", classes), **meta}
    return save_checkpoint(root / "ckpt" / name / "model.safetensors", model.state_dict(), full)


class _OpensAFile:
    """Pickled, it makes the unpickler call open(path, 'w'): proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _write_checkpoints(root: Path) -> None:
    """A good ReLU checkpoint, and ones that are broken or made for something else."""
    _save(root, "relu")
    _save(root, "c100", 100, num_classes=100, dataset="cifar100")
    _save(root, "arch", arch="resnet20_snnc")
    _save(root, "classes", num_classes=100)  # weights for 10 classes, sidecar says 100
    size = _save(root, "truncated").stat().st_size
    with open(root / "ckpt" / "truncated" / "model.safetensors", "r+b") as f:
        f.truncate(size // 2)
    weights = _save(root, "corrupted")
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0xFF
    weights.write_bytes(bytes(data))
    # A torch (pickle) file under the safetensors name, with a sidecar whose sha256 matches it.
    weights = _save(root, "pickle")
    torch.save({"features.0.weight": _OpensAFile(root / "unpickled")}, weights)
    side = sidecar_path(weights)
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": sha256_file(weights)}))


def _write_old_result(root: Path) -> None:
    """An evaluation folder whose result.json predates the current format."""
    run = root / "old"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"format": 0, "method": {"name": "maxnorm"}, "runs": []}))
    (run / "accuracy.csv").write_text("dataset,arch,activation,method,seed,t,T_run,accuracy\n")


def _write_configs(root: Path) -> None:
    """Workflow configurations: broken YAML, and two that fail the schema."""
    folder = root / "config"
    folder.mkdir()
    (folder / "not-yaml.yaml").write_text("data_root: x\nT: [1, 2\nanns: {\n")
    entry = "anns:\n  - {dataset: cifar10, arch: vgg_small, activations: [%s], recipe: quick_cpu}\n"
    (folder / "T-zero.yaml").write_text("data_root: x\nT: [0]\n" + entry % "relu")
    (folder / "activation.yaml").write_text("data_root: x\nT: [1]\n" + entry % "tanh")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    _write_trees(root)
    _write_checkpoints(root)
    _write_old_result(root)
    _write_configs(root)
    return root


# -- running ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """A finished process."""

    returncode: int
    stdout: str
    stderr: str


def _env(root: Path) -> dict[str, str]:
    return cli_env(OMP_WAIT_POLICY="PASSIVE", FTBC_CACHE=str(root / "cache"))


def _args(case: Case, root: Path, out_id: str) -> list[str]:
    """The command's arguments, ``--out`` (or the workflow's workdir) last."""
    args = [a.replace("{root}", str(root)) for a in case.argv]
    out = str(root / "out" / out_id)
    if case.snakemake:
        return ["-m", "snakemake", "-n", "--configfile", *args, "--config", f"workdir={out}"]
    return [*args, "--out", out]


def _run_plain(case: Case, root: Path, out_id: str) -> Run:
    """``python -m ftbc ...`` (or ``python -m snakemake ...``) as its own process."""
    argv = _args(case, root, out_id)
    cmd = [sys.executable, *(argv if case.snakemake else ["-m", "ftbc", *argv])]
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(root), capture_output=True, text=True, timeout=300)
    return Run(r.returncode, r.stdout, r.stderr)


def _run_forked(cases: list[Case], root: Path) -> dict[str, Run]:
    """The ``ftbc`` cases through tests/_forked_cli.py, ``WORKERS`` at a time."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    jobs = [dict(id=c.id, argv=_args(c, root, c.id), stdout=str(logs / f"{c.id}.out"),
                 stderr=str(logs / f"{c.id}.err")) for c in cases]
    (logs / "jobs.json").write_text(json.dumps(jobs))
    driver = [sys.executable, str(REPO_ROOT / "tests" / "_forked_cli.py"), str(logs / "jobs.json"),
              str(logs / "status.json"), str(WORKERS)]
    r = subprocess.run(driver, cwd=REPO_ROOT, env=_env(root), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    status = json.loads((logs / "status.json").read_text())
    return {j["id"]: Run(status[j["id"]], Path(j["stdout"]).read_text(), Path(j["stderr"]).read_text())
            for j in jobs}


@pytest.fixture(scope="module")
def results(root: Path) -> dict[str, Run]:
    """Every case's finished process by case id; ``ID@plain`` for the plain ``python -m ftbc`` runs."""
    by_id = {c.id: c for c in CASES}
    with ThreadPoolExecutor(WORKERS) as pool:
        plain = {c.id: pool.submit(_run_plain, c, root, c.id) for c in CASES if c.snakemake}
        plain.update({f"{i}@plain": pool.submit(_run_plain, by_id[i], root, f"{i}@plain") for i in PLAIN})
        forked = _run_forked([c for c in CASES if not c.snakemake], root)
        return {**forked, **{k: f.result() for k, f in plain.items()}}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# -- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if not c.snakemake and c.status == 2], ids=lambda c: c.id)
def test_a_bad_input_gives_one_line_status_2_and_no_output(case: Case, root: Path, results) -> None:
    r = results[case.id]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert lines[0].startswith("ftbc"), lines[0]
    for word in case.words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert _files(root / "out" / case.id) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.snakemake], ids=lambda c: c.id)
def test_a_bad_configuration_fails_before_any_job(case: Case, root: Path, results) -> None:
    r = results[case.id]
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "Traceback" not in text
    for word in case.words:
        assert word in text, f"{word!r} not in: {text}"
    assert not (root / "out" / case.id).exists()


@pytest.mark.parametrize("case_id", PLAIN)
def test_forked_runs_match_plain_python_m_ftbc(case_id: str, root: Path, results) -> None:
    forked, plain = results[case_id], results[f"{case_id}@plain"]
    assert (plain.returncode, plain.stderr, plain.stdout) == (forked.returncode, forked.stderr, forked.stdout)
    assert _files(root / "out" / f"{case_id}@plain") == []


@pytest.mark.parametrize("case_id, word", [("ckpt-other-arch", "unexpected features"),
                                           ("ckpt-other-classes", "fc.weight")])
def test_a_checkpoint_that_does_not_fit_says_what_differs(case_id: str, word: str, results) -> None:
    assert word in results[case_id].stderr


def test_the_good_inputs_succeed(root: Path, results) -> None:
    r = results["good-evaluate"]
    assert r.returncode == 0, r.stderr
    assert {p.name for p in _files(root / "out" / "good-evaluate")} == {
        "accuracy.csv", "activity.csv", "result.json", "run.yaml"}


def test_a_pickled_checkpoint_is_never_unpickled(root: Path, results) -> None:
    """The pickle case fails as above, and the pickle's payload did not run."""
    assert results["ckpt-pickle"].returncode == 2
    with open(root / "ckpt" / "pickle" / "model.safetensors", "rb") as f:
        assert f.read(2) == b"PK"  # really a torch zip file holding a pickle
    assert not (root / "unpickled").exists()


# -- no unpickling in the suite's own source -----------------------------------------------

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"}
TORCH_LOADERS = ("torch", "torch.jit")  # torch.load, torch.jit.load


def _unpickling_calls(path: Path) -> list[str]:
    """``torch.load`` / ``torch.jit.load``, pickle-family imports and ``allow_pickle=True`` in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and node.attr == "load" and ast.unparse(node.value) in TORCH_LOADERS:
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{where}: from torch import load")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: import {n}" for n in names if n.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle" and ast.unparse(node.value) != "False":
            found.append(f"{where}: allow_pickle={ast.unparse(node.value)}")
    return found


# The one deliberate exception: the releases' .pth files are torch pickles, read with the
# restricted unpickler (weights_only=True) by the import command and nowhere else.
RELEASE_READER = "ftbc/interop/checkpoint_import.py"


def _suite_unpickling() -> list[str]:
    files = sorted((REPO_ROOT / "ftbc").rglob("*.py")) + sorted((REPO_ROOT / "baselines").rglob("*.py"))
    assert len(files) > 20, "the source tree was not found"
    return [hit for f in files for hit in _unpickling_calls(f)
            if not (hit.startswith(RELEASE_READER + ":") and hit.endswith(": torch.load"))]


def test_the_release_reader_loads_weights_only() -> None:
    """Every torch.load call in the import command passes weights_only=True."""
    tree = ast.parse((REPO_ROOT / RELEASE_READER).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"]
    assert calls and all(any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in c.keywords)
                         for c in calls)


def test_the_scan_finds_unpickling(tmp_path: Path, monkeypatch) -> None:
    """The scanner itself: it flags each way of unpickling, and not the word in a docstring."""
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    src = tmp_path / "m.py"
    src.write_text('"""never torch.load(x)"""\nimport torch, pickle\nfrom torch import load\n'
                   "torch.load(p, weights_only=True)\ntorch.jit.load(p)\nnp.load(p, allow_pickle=True)\n")
    assert len(_unpickling_calls(src)) == 5


def test_checkpoints_and_results_are_never_unpickled() -> None:
    """Nothing but the data cache (see the next test) calls torch.load or imports pickle."""
    assert _suite_unpickling() == []


def test_no_module_calls_torch_load() -> None:
    assert _suite_unpickling() == []
