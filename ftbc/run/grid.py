"""The workflow's job grid, computed from its configuration (``config/*.yaml``).

Kept out of the Snakefile so it can be tested and read on its own: which ANNs
are trained (once per dataset, arch, activation and seed), which evaluations
run (per method: one run to T_max when the method's constants do not depend
on T, one run per T when they do, as the method registry says), and where
each job writes. ``workflow/rules/common.smk`` only calls these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftbc.errors import UserError


@dataclass(frozen=True)
class Ann:
    """One ANN to train."""

    dataset: str
    arch: str
    act: str
    seed: int
    recipe: str
    epochs: int | None = None
    device: str = "cpu"
    L: int | None = None
    y_th: float | None = None
    checkpoint: str | None = None  # a given, already trained ANN (model.safetensors beside its model.json)

    @property
    def act_args(self) -> str:
        """``ftbc train`` options of the activation (QCFS steps, clip level) when the entry sets them."""
        if self.act == "qcfs" and self.L:
            return f"--L {self.L}"
        if self.act == "clip" and self.y_th:
            return f"--y-th {self.y_th}"
        return ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.arch, self.act, self.seed)


@dataclass(frozen=True)
class Evaluation:
    """One ``ftbc evaluate`` job: a method on an ANN, at ``steps`` ('1-32' for T-free, '8' for T=8)."""

    ann: Ann
    method: str
    steps: str
    settings: tuple[tuple[str, Any], ...] = field(default=())
    calib_seed: int = 0
    budget: str = "release"  # the configuration's named budget (baselines/budgets.py); settings apply on top


def _entries(config: dict) -> list[dict]:
    return config.get("anns", [])


def anns(config: dict) -> list[Ann]:
    """Every ANN of the grid, each once; two entries asking for the same one differently is an error."""
    out: dict[tuple, Ann] = {}
    for e in _entries(config):
        given = e.get("checkpoints") or {}
        extra = sorted(set(given) - set(e["activations"]))
        if extra:
            raise UserError(f"{e['dataset']}/{e['arch']}: checkpoints given for {', '.join(extra)}, "
                            f"which the entry's activations do not list")
        if given and len(e.get("seeds", [0])) > 1:
            raise UserError(f"{e['dataset']}/{e['arch']}: a given checkpoint is one trained ANN; "
                            f"list one seed (the seed it was trained with)")
        for act in e["activations"]:
            for seed in e.get("seeds", [0]):
                ann = Ann(e["dataset"], e["arch"], act, int(seed), e["recipe"], e.get("epochs"),
                          e.get("device", config.get("device", "cpu")), e.get("L"), e.get("y_th"),
                          given.get(act))
                if ann.key in out and out[ann.key] != ann:
                    raise UserError(f"the grid trains {'/'.join(map(str, ann.key))} twice with different "
                                    "settings; give each (dataset, arch, activation, seed) one entry")
                out[ann.key] = ann
    return list(out.values())


def plugins(config: dict) -> list[str]:
    """Modules with methods of their own (``plugins:``), imported before any name is checked;
    the jobs import them too (``FTBC_PLUGINS``) and every result records them."""
    return [str(m) for m in config.get("plugins") or []]


def check(config: dict) -> None:
    """Reject, before any job runs, a configuration whose names the jobs would not know:
    methods under ``method_settings`` (a misspelt one would silently leave its jobs at the
    release setting), settings a method does not have, and each ANN's arch and recipe."""
    from baselines import list_methods, load_plugins
    from ftbc.models import list_models
    from ftbc.train.recipes import list_recipes

    load_plugins(",".join(plugins(config)))
    budget_of(config)
    known = list_methods()
    settings = config.get("method_settings") or {}
    unknown = [name for name in settings if name not in known]
    if unknown:
        raise UserError(f"method_settings names unknown method(s) {', '.join(unknown)}; registered: "
                        f"{', '.join(known)}")
    models, recipes = set(list_models()), set(list_recipes())
    for e in _entries(config):
        where = f"anns entry {e['dataset']}/{e['arch']}"
        if e["arch"] not in models:
            raise UserError(f"{where}: unknown arch {e['arch']!r}; models: {', '.join(sorted(models))}")
        if e["recipe"] not in recipes and not Path(e["recipe"]).is_file():
            raise UserError(f"{where}: unknown recipe {e['recipe']!r} (neither a recipe of ftbc/recipes nor "
                            f"a YAML file); recipes: {', '.join(sorted(recipes))}")
    for name in settings:
        for dataset in datasets(config) or [None]:
            _method(name, dataset, settings_for(config, name), budget_of(config))


@lru_cache(maxsize=None)
def _method(name: str, dataset: str, settings: tuple[tuple[str, Any], ...], budget: str = "release"):
    from baselines.budgets import resolve_method

    try:
        return resolve_method(name, dataset, budget, dict(settings))
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None


def method_names(config: dict, entry: dict) -> list[str]:
    from baselines import list_methods

    names = entry.get("methods", config.get("methods", "all"))
    known = list_methods()
    if names == "all":
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)} in the configuration; registered: "
                        f"{', '.join(known)}")
    return list(names)


def budget_of(config: dict) -> str:
    """The configuration's named budget (``budget:``, default ``release``); an unknown name is a UserError."""
    from baselines.budgets import RELEASE, budget_overrides

    name = config.get("budget") or RELEASE
    budget_overrides(name, "")
    return name


def settings_for(config: dict, method: str) -> tuple[tuple[str, Any], ...]:
    """The configuration's overrides of ``method``'s settings, as a hashable, sorted tuple."""
    return tuple(sorted((config.get("method_settings") or {}).get(method, {}).items()))


def calibration_seeds(config: dict) -> list[int]:
    """Seeds of the calibration draws, crossed with every ANN seed (SNN Calibration's protocol:
    several calibration seeds on one ANN); the tables average over both."""
    return list((config.get("evaluation") or {}).get("calibration_seeds", [0]))


def evaluations(config: dict) -> list[Evaluation]:
    """Every evaluation job: methods matched to the ANNs of their activation."""
    Ts = sorted(set(int(t) for t in config["T"]))
    by_key = {a.key: a for a in anns(config)}
    budget = budget_of(config)
    jobs = []
    for e in _entries(config):
        for name in method_names(config, e):
            settings = settings_for(config, name)
            m = _method(name, e["dataset"], settings, budget)
            if m.activation not in e["activations"]:
                continue
            for seed in e.get("seeds", [0]):
                ann = by_key[(e["dataset"], e["arch"], m.activation, int(seed))]
                steps = [str(T) for T in Ts] if m.t_dependent else [f"1-{Ts[-1]}"]
                jobs += [Evaluation(ann, name, s, settings, int(c), budget) for c in calibration_seeds(config)
                         for s in steps]
    return jobs


# -- paths: one template per job folder; grid fills it for a job, the rules (common.smk) with
# their wildcards through rule_pattern ------------------------------------------------------

ANN_KEY = "{dataset}/{arch}/{act}/seed{seed}"
EVAL_KEY = "{dataset}/{arch}/seed{seed}/{method}/cal{calib_seed}/T{steps}"
ANN_DIR = "{work}/ann/" + ANN_KEY
EVAL_DIR = "{work}/snn/" + EVAL_KEY
DATA_DIR = "{work}/data/{dataset}"  # an archive extracted, a subset copied (data_root)
DATA_INFO = DATA_DIR + ".json"
# the rules' wildcard for each template field (the calibration seed is {cseed} there)
WILDCARDS = {"dataset": "{dataset}", "arch": "{arch}", "act": "{act}", "seed": "{seed}", "method": "{method}",
             "calib_seed": "{cseed}", "steps": "{steps}"}


def rule_pattern(template: str, **fixed: str) -> str:
    """``template`` with the rules' wildcards in its fields (``fixed`` fills others, e.g. ``work``)."""
    return template.format(**{**WILDCARDS, **fixed})


def ann_files() -> dict[str, str]:
    """The files of an ANN folder by the train rule's output names: the weights and their sidecar."""
    from ftbc._io import sidecar_path
    from ftbc.models.checkpoint import CHECKPOINT_NAME

    return {"weights": CHECKPOINT_NAME, "meta": sidecar_path(CHECKPOINT_NAME).name}


def eval_files() -> dict[str, str]:
    """The files of an evaluation folder by the evaluate rule's output names."""
    from ftbc.report.naming import RUN_FILES

    return dict(RUN_FILES)


def ann_dir(config: dict, ann: Ann) -> str:
    return ANN_DIR.format(work=config["workdir"], dataset=ann.dataset, arch=ann.arch, act=ann.act, seed=ann.seed)


def checkpoint_path(config: dict, ann: Ann) -> str:
    """The ANN's weights: the given checkpoint, or where the training rule writes them."""
    return ann.checkpoint or f"{ann_dir(config, ann)}/{ann_files()['weights']}"


def eval_dir(config: dict, ev: Evaluation) -> str:
    a = ev.ann
    return EVAL_DIR.format(work=config["workdir"], dataset=a.dataset, arch=a.arch, seed=a.seed,
                           method=ev.method, calib_seed=ev.calib_seed, steps=ev.steps)


def result_path(config: dict, ev: Evaluation) -> str:
    """The evaluation's ``result.json``, which the tables rule reads."""
    return f"{eval_dir(config, ev)}/{eval_files()['result']}"


def evaluation_key(ev: Evaluation) -> tuple[str, str, int, str, int, str]:
    """How the rules' wildcards name an evaluation: (dataset, arch, seed, method, cseed, steps)."""
    return (ev.ann.dataset, ev.ann.arch, ev.ann.seed, ev.method, ev.calib_seed, ev.steps)


def data_root(config: dict, dataset: str) -> str:
    """The folder jobs read ``dataset`` from (an archive is extracted under the work folder)."""
    from ftbc.data.prepare import is_archive

    raw = raw_data_root(config, dataset)
    extracted = str(Path(DATA_DIR.format(work=config["workdir"], dataset=dataset)))
    return extracted if is_archive(raw) or subset_args(config) else raw


def subset_args(config: dict) -> str:
    """``ftbc prepare-data`` options of the configuration's data_subset (smoke runs)."""
    sub = config.get("data_subset") or {}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(sub.items()) if v)


def raw_data_root(config: dict, dataset: str) -> str:
    """The configured data root; ``auto`` becomes the copy :func:`ftbc.data.prepare.discover` finds
    (the checkout's data/, ../shared/data/, $FTBC_DATA_ROOT) when there is one."""
    from ftbc.data.prepare import AUTO, CHECKOUT, discover

    raw = (config.get("data_roots") or {}).get(dataset, config.get("data_root", AUTO))
    if raw == AUTO:
        found = discover(dataset)
        if found is not None:
            return str(found)
        return str(CHECKOUT / "data") if config.get("download") else raw
    return raw


def datasets(config: dict) -> list[str]:
    return sorted({e["dataset"] for e in _entries(config)})


def figure_keys(config: dict) -> list[tuple[str, str]]:
    """(dataset, arch) pairs that get an accuracy-against-T figure."""
    return sorted({(ev.ann.dataset, ev.ann.arch) for ev in evaluations(config)})


RESOURCE_DEFAULTS = {"gpu": 0, "mem_mb": 4000, "runtime": 60}


def resources_for(config: dict, rule: str, dataset: str, arch: str) -> dict[str, int]:
    """A rule's resources for one (dataset, arch): built-in defaults < top-level < the ANN entry's."""
    res = {**RESOURCE_DEFAULTS, **(config.get("resources") or {}).get(rule, {})}
    for e in _entries(config):
        if e["dataset"] == dataset and e["arch"] == arch:
            res.update((e.get("resources") or {}).get(rule, {}))
            break
    return res


def explain_validation(text: str) -> str:
    """One line from ``snakemake.utils.validate``'s error: where in the configuration, and what is wrong."""
    import re

    what = re.search(r"ValidationError: (.*)", text)
    where = re.search(r"On instance((?:\[[^\]]*\])*)", text)
    path = ""
    if where:
        path = ".".join(p.strip("'\"") if not p.isdigit() else f"[{p}]"
                        for p in re.findall(r"\[([^\]]*)\]", where.group(1))).replace(".[", "[")
    msg = what.group(1) if what else text.strip().splitlines()[0]
    return f"invalid configuration{' at ' + path if path else ''}: {msg} (see workflow/schemas/config.schema.yaml)"
