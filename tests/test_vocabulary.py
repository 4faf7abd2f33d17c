"""One home per vocabulary: each list of names or defaults is defined once and every consumer reads it.

Where a consumer cannot import Python (the configuration's JSON schema, the SLURM profile), these tests
hold it equal to the package's definition so the two cannot drift; the Snakemake rules import theirs
(checked through a dry run). A last test scans the code for the literals a restatement would bring back.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftbc.data.catalog import DATASETS, DATASET_NAMES, DATASET_NAMES_TEXT
from ftbc.models.activations import ACTIVATIONS, QCFS, QCFS_DEFAULT_INIT_LAMBDA, QCFS_DEFAULT_L

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
ANN_ENTRY = SCHEMA["properties"]["anns"]["items"]["properties"]


def _choices(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


# -- activation names: ftbc.models.activations.ACTIVATIONS ----------------------------------------

def test_activation_names_have_one_home():
    from ftbc.interop.checkpoint_import import get_args_parser as import_parser
    from ftbc.models import checkpoint
    from ftbc.run import reproduce
    from ftbc.snn import method
    from ftbc.train.training import get_args_parser as train_parser

    assert checkpoint.ACTIVATIONS is ACTIVATIONS and method.ACTIVATIONS is ACTIVATIONS
    assert reproduce.ACTIVATIONS is ACTIVATIONS
    assert tuple(_choices(train_parser(), "--act").choices) == ACTIVATIONS
    assert tuple(_choices(import_parser(), "--act").choices) == ACTIVATIONS
    # each activation's settings (ACT_KWARGS) are the ftbc train options that apply to it
    from ftbc.errors import TrainingError
    from ftbc.models.activations import ACT_KWARGS

    assert list(ACT_KWARGS) == list(ACTIVATIONS)
    for act in ACTIVATIONS:
        for other in set(ACT_KWARGS["qcfs"] + ACT_KWARGS["clip"]) - set(ACT_KWARGS[act]):
            with pytest.raises(TrainingError, match="does not apply"):
                checkpoint.resolve_act_kwargs(act, "cifar10", **{other: 1})
    # the schema cannot import it: its enum and the per-activation checkpoint keys equal it
    assert ANN_ENTRY["activations"]["items"]["enum"] == list(ACTIVATIONS)
    assert list(ANN_ENTRY["checkpoints"]["properties"]) == list(ACTIVATIONS)


def test_every_registered_method_needs_a_known_activation():
    from baselines import get_method, list_methods

    assert {get_method(n).activation for n in list_methods()} <= set(ACTIVATIONS)


# -- dataset names and normalisation: ftbc.data.catalog.DATASETS -----------------------------------

def test_dataset_names_have_one_home():
    from ftbc.data.prepare import get_args_parser as prepare_parser
    from ftbc.interop.checkpoint_import import get_args_parser as import_parser
    from ftbc.train.training import get_args_parser as train_parser

    assert DATASET_NAMES == ("cifar10", "cifar100", "imagenet")
    assert DATASET_NAMES_TEXT == "cifar10, cifar100 or imagenet"
    for parser in (prepare_parser(), import_parser(), train_parser()):
        assert _choices(parser, "--dataset").help.startswith(DATASET_NAMES_TEXT)
    assert "10 / 100 / 1000" in _choices(import_parser(), "--dataset").help
    assert SCHEMA["properties"]["data_roots"]["propertyNames"]["enum"] == list(DATASET_NAMES)
    assert ANN_ENTRY["dataset"]["enum"] == list(DATASET_NAMES)


def test_model_normalisation_reads_the_dataset_table():
    from ftbc.models import _factory

    assert (_factory.CIFAR10_MEAN, _factory.CIFAR10_STD) == (DATASETS["cifar10"].mean, DATASETS["cifar10"].std)
    assert (_factory.IMAGENET_MEAN, _factory.IMAGENET_STD) == (DATASETS["imagenet"].mean, DATASETS["imagenet"].std)
    assert _factory.cifar_cfg()["mean"] == DATASETS["cifar10"].mean
    assert _factory.imagenet_cfg()["std"] == DATASETS["imagenet"].std


def test_calibration_transforms_have_one_home():
    from ftbc.data.calibration_pool import TRANSFORMS
    from ftbc.run.evaluation import get_args_parser as evaluate_parser

    assert tuple(_choices(evaluate_parser(), "--calibration-transform").choices) == TRANSFORMS
    assert SCHEMA["properties"]["evaluation"]["properties"]["calibration_transform"]["enum"] == list(TRANSFORMS)


# -- QCFS defaults (L, initial lambda) and the clip level: ftbc.models.activations / checkpoint ------

def test_qcfs_defaults_have_one_home():
    from ftbc.interop.checkpoint_import import get_args_parser as import_parser
    from ftbc.models import checkpoint
    from ftbc.train.training import get_args_parser as train_parser

    q = QCFS()
    assert (q.L, q.lam.item()) == (QCFS_DEFAULT_L, QCFS_DEFAULT_INIT_LAMBDA) == (4, 8.0)
    assert (checkpoint.DEFAULT_L, checkpoint.DEFAULT_INIT_LAMBDA) == (QCFS_DEFAULT_L, QCFS_DEFAULT_INIT_LAMBDA)
    assert checkpoint.resolve_act_kwargs("qcfs", "imagenet", arch="vgg16_imagenet") == {
        "L": checkpoint.QCFS_L[("imagenet", "vgg16")], "init_lambda": QCFS_DEFAULT_INIT_LAMBDA}
    # the help texts and the schema's description word the table, read from it
    assert checkpoint.QCFS_L_HELP == "4 CIFAR, 8 ImageNet ResNet-34, 16 ImageNet VGG-16"
    assert checkpoint.Y_TH_HELP == "1 CIFAR-10, 2 CIFAR-100, 3 ImageNet"
    assert str(QCFS_DEFAULT_INIT_LAMBDA) in _choices(train_parser(), "--init-lambda").help
    for parser in (train_parser(), import_parser()):
        assert checkpoint.QCFS_L_HELP in _choices(parser, "--L").help
        assert checkpoint.Y_TH_HELP in _choices(parser, "--y-th").help
    assert checkpoint.QCFS_L_HELP in ANN_ENTRY["L"]["description"]


# -- resource defaults: ftbc.run.grid.RESOURCE_DEFAULTS ---------------------------------------------

def test_resource_defaults_have_one_home():
    from ftbc.run.grid import RESOURCE_DEFAULTS, resources_for

    schema_defaults = {k: v["default"] for k, v in SCHEMA["$defs"]["resources"]["properties"].items()}
    assert schema_defaults == RESOURCE_DEFAULTS
    # the SLURM profile's defaults (rules without resources of their own) are the same numbers
    slurm = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert {k: slurm["default-resources"][k] for k in ("mem_mb", "runtime")} == {
        k: RESOURCE_DEFAULTS[k] for k in ("mem_mb", "runtime")}
    assert resources_for({"anns": []}, "train", "cifar10", "resnet20") == RESOURCE_DEFAULTS
    assert set(SCHEMA["properties"]["resources"]["properties"]) == {"train", "evaluate"}


# -- job paths: ftbc.run.grid's templates, filled by grid for a job and by the rules with wildcards ----

def test_rule_patterns_are_grid_templates_with_wildcards():
    from ftbc.run import grid

    ann = grid.Ann("cifar10", "resnet20", "qcfs", 2, "quick_cpu")
    ev = grid.Evaluation(ann, "ftbc_qcfs", "1-32", calib_seed=3)
    wildcards = {"dataset": "cifar10", "arch": "resnet20", "act": "qcfs", "seed": "2", "method": "ftbc_qcfs",
                 "cseed": "3", "steps": "1-32"}
    config = {"workdir": "w"}
    assert grid.rule_pattern(grid.EVAL_DIR, work="w").format(**wildcards) == grid.eval_dir(config, ev)
    assert grid.rule_pattern(grid.ANN_DIR, work="w").format(**wildcards) == grid.ann_dir(config, ann)
    assert grid.eval_dir(config, ev) == "w/snn/cifar10/resnet20/seed2/ftbc_qcfs/cal3/T1-32"
    assert grid.result_path(config, ev) == "w/snn/cifar10/resnet20/seed2/ftbc_qcfs/cal3/T1-32/result.json"
    assert grid.checkpoint_path(config, ann) == "w/ann/cifar10/resnet20/qcfs/seed2/model.safetensors"
    assert grid.rule_pattern(grid.DATA_INFO, work="w") == "w/data/{dataset}.json"
    assert grid.DATA_INFO == grid.DATA_DIR + ".json"
    subset = {"workdir": "w", "data_root": "/x", "data_subset": {"train_per_class": 2}}
    assert grid.data_root(subset, "cifar10") == grid.DATA_DIR.format(work="w", dataset="cifar10") == "w/data/cifar10"
    assert grid.ann_files() == {"weights": "model.safetensors", "meta": "model.json"}
    assert grid.eval_files() == {"result": "result.json", "accuracy": "accuracy.csv", "activity": "activity.csv"}


def test_evaluate_writes_the_files_grid_names():
    import inspect

    from ftbc.report.naming import RUN_FILES
    from ftbc.run import evaluation

    src = inspect.getsource(evaluation)
    for key in RUN_FILES:
        assert f'RUN_FILES["{key}"]' in src


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_the_rules_outputs_are_the_paths_grid_builds(tmp_path):
    """A dry run of the smoke grid: every job's output is the path grid builds for it."""
    from ftbc.run import grid

    work = str(tmp_path / "w")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/smoke.yaml", "--config",
                        f"workdir={work}", f"results={tmp_path}/t"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    outputs: dict[str, set[str]] = {}
    for rule, out in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    output: (.*)$", r.stdout, re.M):
        outputs.setdefault(rule, set()).update(out.split(", "))
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text()) | {"workdir": work}
    evaluations = grid.evaluations(config)
    assert outputs["evaluate_snn"] == {f"{grid.eval_dir(config, ev)}/{f}" for ev in evaluations
                                       for f in grid.eval_files().values()}
    assert outputs["train_ann"] == {f"{grid.ann_dir(config, a)}/{f}" for a in grid.anns(config)
                                    for f in grid.ann_files().values()}
    from ftbc.report.naming import ITERATIONS_FIGURE, TABLE_FILES

    assert {f"{tmp_path}/t/{f}" for f in TABLE_FILES.values()} | {f"{tmp_path}/t/figures/{ITERATIONS_FIGURE}"} \
        <= outputs["tables"]
    assert outputs["prepare_data"] == {grid.DATA_INFO.format(work=work, dataset=d) for d in grid.datasets(config)}


# -- the papers: ftbc.models.papers.PAPERS (models' paper_name, methods' reference) -------------------

def test_models_and_methods_read_their_papers():
    import timm

    from baselines import get_method, list_methods
    from ftbc.models import list_models
    from ftbc.models.papers import PAPERS

    titles = {p.title for p in PAPERS.values()}
    for name in list_models():
        paper = timm.models.get_pretrained_cfg(name).to_dict().get("paper_name")
        assert paper is None or paper in titles, (name, paper)
    assert timm.models.get_pretrained_cfg("resnet20_qcfs").to_dict()["paper_name"] == PAPERS["qcfs"].title
    assert PAPERS["snnc"].cite == "Li et al., ICML 2021"
    for name in list_methods():
        ref = get_method(name).reference
        assert name == "maxnorm" or ref in {p.reference for p in PAPERS.values()}, (name, ref)
    assert get_method("qcfs").reference == PAPERS["qcfs"].reference
    assert get_method("maxnorm").reference == "Rueckauer et al. 2017; SNN Calibration's release (Li et al., ICML 2021)"


# -- no restatement comes back ----------------------------------------------------------------------

RESTATEMENTS = [  # (a literal a restatement would bring back, the one file allowed to hold it)
    (r"0\.4914|0\.2023|0\.485\b|0\.229\b", "ftbc/data/catalog.py"),
    (r"relu\|qcfs|cifar10\|cifar100", None),
    (r"""["']relu["'],\s*["']qcfs["'],\s*["']clip["']""", None),
    (r'"result\.json"|"activity\.csv"', "ftbc/report/naming.py"),  # accuracy.csv also names the tables' file
    (r"init_lambda: float = 8|DEFAULT_INIT_LAMBDA = 8", "ftbc/models/activations.py"),
    (r'"spikes\.csv"|"summary\.csv"|ftbc_iterations\.png', "ftbc/report/naming.py"),
    (r"/snn/\{\{dataset|/ann/\{\{dataset|/data/\{\{dataset", None),
    (r"A Free Lunch From ANN:|Optimized Potential Initialization for|Optimal ANN-SNN Conversion for|"
     r"Optimal Conversion of Conventional|FTBC: Forward Temporal", "ftbc/models/papers.py"),
]


def _code(path: Path) -> str:
    """The file's text, its docstrings blanked (prose may name a paper or a file)."""
    text = path.read_text()
    if path.suffix != ".py":
        return text
    import ast

    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, documented) and ast.get_docstring(node):
            doc = node.body[0]
            lines[doc.lineno - 1:doc.end_lineno] = [""] * (doc.end_lineno - doc.lineno + 1)
    return "\n".join(lines)


@pytest.mark.parametrize("pattern, home", RESTATEMENTS)
def test_no_restatement_in_the_code(pattern, home):
    files = [*ROOT.glob("ftbc/**/*.py"), *ROOT.glob("baselines/*.py"), *ROOT.glob("workflow/rules/*.smk"),
             ROOT / "Snakefile"]
    found = sorted(str(f.relative_to(ROOT)) for f in files if re.search(pattern, _code(f)))
    assert set(found) <= ({home} if home else set()), found
