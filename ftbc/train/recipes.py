"""Training recipes as data: one YAML file per lineage in ``ftbc/recipes/``.

A recipe holds the optimiser, schedule and augmentation of one published (or
suite-chosen) training setup; each file names its source (its section numbers
are those of docs/methods.md). The trainer reads a recipe through
:func:`load_recipe`, which checks every key, so a misspelt key or a wrong type
fails before any epoch runs.

Keys (all required in a file):

    description     str, one line
    source          str, where the numbers come from
    epochs          int >= 1
    batch_size      int >= 1
    opt             'momentum' (SGD, heavy ball) or 'sgd' (timm: SGD + Nesterov)
    lr              float > 0, the base learning rate
    momentum        float in [0, 1)
    weight_decay    float >= 0
    schedule        'cosine' or 'step' (step: x gamma at each of milestones)
    milestones      list of int epochs, counted from 0 as torch's MultiStepLR
    gamma           float > 0
    warmup_epochs   int >= 0 (linear warm-up inside the schedule's epochs)
    label_smoothing float in [0, 1)
    augmentation    {crop: bool, flip: bool, autoaugment: bool, cutout: int >= 0}

Optional:

    decay_all_parameters  bool, default false: weight decay on every parameter, as the
                    SNN Calibration, QCFS and RTS releases do (``SGD(model.parameters(),
                    weight_decay=...)``: biases, BN and QCFS's lambda shrink too); false
                    keeps timm's rule (no decay for parameters with ndim <= 1)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ftbc.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"

OPTIMIZERS = ("momentum", "sgd")
SCHEDULES = ("cosine", "step")
AUGMENTATION_KEYS = ("crop", "flip", "autoaugment", "cutout")
_STR_KEYS = ("description", "source")
OPTIONAL_KEYS = {"decay_all_parameters": False}


class RecipeError(UserError):
    """A recipe name is unknown or a recipe file is malformed."""


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``ftbc/recipes/``, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read and validate a recipe by name (``quick_cpu``) or YAML path.

    Returns a plain dict of the keys above plus ``name`` (the file's stem) and
    ``path`` (the file read). Raises :class:`RecipeError` for an unknown name,
    an unreadable file, a missing or unknown key, or a value of the wrong type.
    """
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = RECIPE_DIR / f"{text}.yaml"
        if not path.is_file():
            raise RecipeError(f"unknown recipe {text!r} (choose from {', '.join(list_recipes())}, or give a .yaml path)")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of keys to values")
    recipe = validate_recipe(raw, where=str(path))
    recipe["name"] = path.stem
    recipe["path"] = str(path)
    return recipe


def validate_recipe(raw: dict[str, Any], *, where: str = "recipe") -> dict[str, Any]:
    """Check keys and types of a recipe mapping; return a normalised deep copy."""
    raw = copy.deepcopy(raw)
    raw.pop("name", None)
    raw.pop("path", None)
    expected = set(_STR_KEYS) | {
        "epochs", "batch_size", "opt", "lr", "momentum", "weight_decay", "schedule",
        "milestones", "gamma", "warmup_epochs", "label_smoothing", "augmentation",
    }
    missing, unknown = sorted(expected - raw.keys()), sorted(raw.keys() - expected - set(OPTIONAL_KEYS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise RecipeError(f"{where}: {'; '.join(parts)}")

    out: dict[str, Any] = {k: str(raw[k]) for k in _STR_KEYS}
    out["epochs"] = _int(raw, "epochs", where, minimum=1)
    out["batch_size"] = _int(raw, "batch_size", where, minimum=1)
    out["warmup_epochs"] = _int(raw, "warmup_epochs", where, minimum=0)
    out["lr"] = _float(raw, "lr", where, low=0.0, low_open=True)
    out["momentum"] = _float(raw, "momentum", where, low=0.0, high=1.0)
    out["weight_decay"] = _float(raw, "weight_decay", where, low=0.0)
    out["gamma"] = _float(raw, "gamma", where, low=0.0, low_open=True)
    out["label_smoothing"] = _float(raw, "label_smoothing", where, low=0.0, high=1.0)
    out["opt"] = _choice(raw, "opt", OPTIMIZERS, where)
    out["schedule"] = _choice(raw, "schedule", SCHEDULES, where)
    ms = raw["milestones"] if raw["milestones"] is not None else []
    if not isinstance(ms, list) or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in ms):
        raise RecipeError(f"{where}: milestones must be a list of positive epoch numbers, got {ms!r}")
    if ms != sorted(ms):
        raise RecipeError(f"{where}: milestones must be increasing, got {ms}")
    if out["schedule"] == "step" and not ms:
        raise RecipeError(f"{where}: schedule 'step' needs milestones")
    out["milestones"] = list(ms)
    out["decay_all_parameters"] = raw.get("decay_all_parameters", OPTIONAL_KEYS["decay_all_parameters"])
    if not isinstance(out["decay_all_parameters"], bool):
        raise RecipeError(f"{where}: decay_all_parameters must be true or false, got {out['decay_all_parameters']!r}")

    aug = raw["augmentation"]
    if not isinstance(aug, dict) or set(aug) != set(AUGMENTATION_KEYS):
        raise RecipeError(f"{where}: augmentation must have exactly the keys {', '.join(AUGMENTATION_KEYS)}, got {aug!r}")
    for k in ("crop", "flip", "autoaugment"):
        if not isinstance(aug[k], bool):
            raise RecipeError(f"{where}: augmentation.{k} must be true or false, got {aug[k]!r}")
    out["augmentation"] = {k: aug[k] for k in ("crop", "flip", "autoaugment")}
    out["augmentation"]["cutout"] = _int(aug, "cutout", f"{where}: augmentation", minimum=0)
    return out


def _int(raw: dict, key: str, where: str, *, minimum: int) -> int:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise RecipeError(f"{where}: {key} must be an integer >= {minimum}, got {v!r}")
    return v


def _float(raw: dict, key: str, where: str, *, low: float, high: float | None = None, low_open: bool = False) -> float:
    v = raw[key]
    # PyYAML (YAML 1.1) reads '5e-4' (no dot) as a string; accept it as a number.
    try:
        f = float(v) if not isinstance(v, bool) else None
    except (TypeError, ValueError):
        f = None
    if f is None or f != f or (f <= low if low_open else f < low) or (high is not None and f >= high):
        rng = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise RecipeError(f"{where}: {key} must be a number {rng}, got {v!r}")
    return f


def _choice(raw: dict, key: str, choices: tuple[str, ...], where: str) -> str:
    v = raw[key]
    if v not in choices:
        raise RecipeError(f"{where}: {key} must be one of {', '.join(choices)}, got {v!r}")
    return v
