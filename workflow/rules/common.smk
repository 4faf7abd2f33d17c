# Configuration check, wildcard constraints and input functions. The grid logic
# itself lives in ftbc/run/grid.py (tested on its own).
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ftbc.data.catalog import DATASET_NAMES
from ftbc.models.activations import ACTIVATIONS
from ftbc.run import grid
from ftbc.errors import UserError
from ftbc.report.naming import ITERATIONS_FIGURE, TABLE_FILES, figure_name

try:
    validate(config, "../schemas/config.schema.yaml", set_default=True)
except WorkflowError as e:
    raise WorkflowError(grid.explain_validation(str(e))) from None

try:
    grid.check(config)
except UserError as e:
    raise WorkflowError(str(e)) from None

WORK = config["workdir"]
# logs/<workdir name>/<rule>/...: two grids run from one checkout never share a log file
LOGS = f"logs/{os.path.basename(os.path.normpath(WORK))}"
RESULTS = config["results"]
ANNS = grid.anns(config)
EVALUATIONS = grid.evaluations(config)
ANN_INDEX = {a.key: a for a in ANNS}
EVAL_INDEX = {grid.evaluation_key(ev): ev for ev in EVALUATIONS}
# the jobs' paths with wildcards, from grid's templates (grid fills the same ones for each job)
DATA_INFO = grid.rule_pattern(grid.DATA_INFO, work=WORK)
ANN_DIR = grid.rule_pattern(grid.ANN_DIR, work=WORK)
ANN_KEY = grid.rule_pattern(grid.ANN_KEY)
EVAL_DIR = grid.rule_pattern(grid.EVAL_DIR, work=WORK)
EVAL_KEY = grid.rule_pattern(grid.EVAL_KEY)
ANN_FILES = {name: f"{ANN_DIR}/{file}" for name, file in grid.ann_files().items()}
EVAL_FILES = {name: f"{EVAL_DIR}/{file}" for name, file in grid.eval_files().items()}


wildcard_constraints:
    dataset="|".join(DATASET_NAMES),
    act="|".join(ACTIVATIONS),
    seed=r"\d+",
    cseed=r"\d+",
    steps=r"\d+(-\d+)?",
    arch=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",


def get_final_output():
    return get_tables()


def get_tables():
    out = [f"{RESULTS}/{name}" for name in TABLE_FILES.values()]
    for d in grid.datasets(config):
        out += [f"{RESULTS}/{d}.md", f"{RESULTS}/{d}.tex", f"{RESULTS}/{d}.html"]
    out += [f"{RESULTS}/figures/{figure_name(d, a)}" for d, a in grid.figure_keys(config)]
    return out + [f"{RESULTS}/figures/{ITERATIONS_FIGURE}"]


def get_evaluation_results(wildcards=None):
    return [grid.result_path(config, ev) for ev in EVALUATIONS]


def get_ann(wildcards):
    key = (wildcards.dataset, wildcards.arch, wildcards.act, int(wildcards.seed))
    if key not in ANN_INDEX:
        raise WorkflowError(f"no ANN {'/'.join(map(str, key))} in the configured grid")
    return ANN_INDEX[key]


def get_evaluation(wildcards):
    key = (
        wildcards.dataset,
        wildcards.arch,
        int(wildcards.seed),
        wildcards.method,
        int(wildcards.cseed),
        wildcards.steps,
    )
    if key not in EVAL_INDEX:
        raise WorkflowError(f"no evaluation {'/'.join(map(str, key))} in the configured grid")
    return EVAL_INDEX[key]


def get_checkpoint(wildcards):
    return grid.checkpoint_path(config, get_evaluation(wildcards).ann)


def get_method_args(wildcards):
    ev = get_evaluation(wildcards)
    args = [f"--budget {ev.budget}"] if ev.budget != "release" else []
    args += [f"--set {k}={v}" for k, v in ev.settings]
    ho = config["evaluation"]
    if ho["holdout"] and ev.method in ho["holdout_methods"]:
        args.append(f"--holdout {ho['holdout']}")
    return " ".join(args)


def get_plugins_env():
    """``FTBC_PLUGINS=...`` for the jobs when the configuration names plugin modules."""
    names = grid.plugins(config)
    return f"FTBC_PLUGINS={','.join(names)} " if names else ""


def get_resources(rule_name):
    def pick(key):
        def f(wildcards):
            return grid.resources_for(config, rule_name, wildcards.dataset, wildcards.arch)[key]

        return f

    return {k: pick(k) for k in grid.RESOURCE_DEFAULTS}
