"""The calibration-stage registry: a stage is ``fn(snn, ctx, **params)`` registered by name.

Below both :mod:`ftbc.snn.method` (which checks a method's stage parameters and asks whether
a stage depends on T) and :mod:`ftbc.snn.conversion` (which runs a method's stages after
conversion). The stages themselves register from :mod:`ftbc.snn.calibration` (FTBC) and
``baselines/snnc.py`` (SNN Calibration's bias, potential and weight calibration).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    fn: Callable[..., None]
    t_dependent: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, *, t_dependent: bool, defaults: Mapping[str, Any] | None = None):
    """Register ``fn(snn, ctx, **params)`` as calibration stage ``name``."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        if name in STAGES:
            raise ValueError(f"calibration stage {name!r} is already registered")
        STAGES[name] = StageSpec(fn, t_dependent, dict(defaults or {}))
        return fn

    return deco


def stage_settings(stage: Any) -> dict[str, Any]:
    """Every parameter ``stage`` runs with: the registered stage's defaults, its own ``params`` on top."""
    try:
        spec = STAGES[stage.name]
    except KeyError:
        raise ValueError(f"unknown calibration stage {stage.name!r}; registered: {sorted(STAGES)}") from None
    return {**spec.defaults, **stage.params}


def run_stages(snn: nn.Module, stages: Sequence[Any], ctx: Any) -> dict[str, float]:
    """Run each stage in order; returns wall time per stage (``<name>_s``)."""
    timings = {}
    for stage in stages:
        try:
            spec = STAGES[stage.name]
        except KeyError:
            raise ValueError(f"unknown calibration stage {stage.name!r}; registered: {sorted(STAGES)}") from None
        unknown = set(stage.params) - set(spec.defaults)
        if unknown:
            raise ValueError(f"stage {stage.name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
        t0 = time.perf_counter()
        spec.fn(snn, ctx, **stage_settings(stage))
        timings[f"{stage.name}_s"] = time.perf_counter() - t0
        logger.info("T=%d: stage %s done in %.1f s", ctx.T, stage.name, timings[f"{stage.name}_s"])
    return timings
