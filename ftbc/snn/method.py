"""A conversion method as data: what the ANN needs, how the neurons are set, what calibrates them.

Every baseline in ``baselines/`` is one :class:`Method` value handed to the
single conversion driver (:func:`ftbc.snn.conversion.convert`); methods differ in
these fields, never in copies of the simulation or calibration code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ftbc.data.calibration_pool import CROP_FLIP
from ftbc.models.activations import ACTIVATIONS
from ftbc.snn.calibration import ftbc_stage  # noqa: F401  (importing it registers the "ftbc" stage)
from ftbc.snn.stages import STAGES
from ftbc.snn.thresholds import RULES, get_rule



@dataclass(frozen=True)
class Stage:
    """One calibration stage run after conversion, by name (see ``ftbc.snn.stages.STAGES``)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A named conversion recipe.

    Attributes:
        name: registry name used in tables (``snnc_light``, ``ftbc_qcfs``, ...).
        activation: the ANN activation the method needs (one of :data:`ftbc.models.activations.ACTIVATIONS`).
        threshold: a rule registered in :data:`ftbc.snn.thresholds.RULES` (``register_threshold_rule``).
        threshold_settings: settings of that rule beyond the ones below, over its defaults
            (``{'quantile': 0.999}`` for a rule registered with that setting).
        threshold_reduce: 'ema' (momentum 0.9 over batches) or 'max' (running maximum).
        channelwise: one threshold per channel instead of per layer.
        percentile: for the 'percentile' rule.
        threshold_positions: search the 'mse' rule on at most this many positions per
            channel and batch (None: all, as the release; a CPU shortcut otherwise).
        threshold_batches, threshold_batch_size: calibration images used to pick thresholds
            (``threshold_batches=None``: every image of the calibration pool once, as the
            RTS release's pass over its whole training loader).
        v0: initial membrane potential as a fraction of theta (QCFS: 0.5).
        shift: add theta / (2T) at every step (RTS, SNNC).
        shift_after_add: with ``shift``, whether neurons whose input current is a
            residual addition (the activation's argument in the traced graph is an
            ``add`` of the main path and the shortcut) get the shift too. True
            (the default) shifts every neuron, as SNN Calibration does; RTS and
            the FTBC variant built on it set False, because the RTS release
            shifts only the current of its convolution / linear spike layers and
            integrates the sum of a residual block's two branches unshifted.
        spiking_classifier: make the last layer spiking too (RTS), theta = max logit.
        calibration_augmentation: what the release's training loader applies to the
            calibration images under the ``'train'`` calibration transform
            (``{crop, flip, autoaugment, cutout}`` as in a recipe; see
            :mod:`ftbc.data.calibration_pool`).
        stages: calibration stages, in order.
        dataset_overrides: per dataset, settings in :meth:`with_overrides` form
            (the releases tune FTBC per dataset).
        summary: one line for ``ftbc methods``.
        reference: the paper.
        label: how the papers' tables name the row (``'SNNC light (BC)'``, ``'FTBC (+QCFS)'``).
        family: the base method a row belongs to; FTBC on a base keeps the base's family,
            so a paper table shows each base, then FTBC on it.
    """

    name: str
    activation: str
    threshold: str = "max"
    threshold_reduce: str = "ema"
    channelwise: bool = False
    percentile: float = 99.99
    threshold_positions: int | None = None
    threshold_settings: Mapping[str, Any] = field(default_factory=dict)
    threshold_batches: int | None = 7
    threshold_batch_size: int = 128
    v0: float = 0.0
    shift: bool = False
    shift_after_add: bool = True
    spiking_classifier: bool = False
    calibration_augmentation: Mapping[str, Any] = field(default_factory=lambda: dict(CROP_FLIP))
    stages: tuple[Stage, ...] = ()
    dataset_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    reference: str = ""
    label: str = ""
    family: str = ""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"method {self.name}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.threshold not in RULES:
            raise ValueError(f"method {self.name}: unknown threshold rule {self.threshold!r}; choose from {sorted(RULES)}")
        unknown = sorted(set(self.threshold_settings) - set(RULES[self.threshold].defaults))
        if unknown:
            raise ValueError(f"method {self.name}: threshold rule {self.threshold!r} has no setting(s) "
                             f"{', '.join(unknown)}; it takes {', '.join(sorted(RULES[self.threshold].defaults)) or 'none'}")
        if self.threshold_reduce not in ("ema", "max"):
            raise ValueError(f"method {self.name}: threshold_reduce must be 'ema' or 'max'")

    @property
    def t_dependent(self) -> bool:
        """True when a constant depends on T, so each T needs its own conversion run."""
        return (
            self.shift
            or get_rule(self.threshold).t_dependent
            or any(STAGES[s.name].t_dependent for s in self.stages)
        )

    @property
    def calibration(self) -> str:
        """What calibrates the SNN after conversion: 'none', 'FTBC', 'FTBC quantile' or the stage names."""
        if not self.stages:
            return "none"
        ftbc = self.stage("ftbc")
        if ftbc is not None:
            return "FTBC quantile" if ftbc.params.get("solver") == "quantile" else "FTBC"
        return "+".join(s.name for s in self.stages)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def for_dataset(self, dataset: str) -> "Method":
        """This method with the settings its releases used on ``dataset``."""
        extra = self.dataset_overrides.get(dataset)
        return self.with_overrides(extra) if extra else self

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Method":
        """Copy with fields or stage parameters replaced: ``{'channelwise': True, 'ftbc.iterations': 5}``."""
        fields = {f.name for f in dataclasses.fields(self)}
        top: dict[str, Any] = {}
        stage_params: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if key.startswith("threshold_settings."):  # one setting of the threshold rule
                rule_settings = top.setdefault("threshold_settings", dict(self.threshold_settings))
                rule_settings[key.split(".", 1)[1]] = value
            elif "." in key:
                stage_name, param = key.split(".", 1)
                if self.stage(stage_name) is None:
                    have = [s.name for s in self.stages] or "none"
                    raise ValueError(f"method {self.name} has no stage {stage_name!r} (stages: {have})")
                stage_params.setdefault(stage_name, {})[param] = value
            elif key in fields and key not in ("name", "dataset_overrides"):
                top[key] = value
            else:
                raise ValueError(f"method {self.name}: unknown setting {key!r}; settings: {sorted(fields - {'name'})}")
        stages = tuple(
            Stage(s.name, {**s.params, **stage_params.get(s.name, {})}) for s in top.pop("stages", self.stages)
        )
        for s in stages:
            if s.name in stage_params:
                _check_stage_params(self.name, s)
        return dataclasses.replace(self, **top, stages=stages)


def _check_stage_params(method: str, stage: Stage) -> None:
    """Raise ValueError for a parameter the registered stage does not take (unregistered stages pass)."""
    spec = STAGES.get(stage.name)
    unknown = sorted(set(stage.params) - set(spec.defaults)) if spec is not None else []
    if unknown:
        raise ValueError(f"method {method}: stage {stage.name!r} has no setting(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(spec.defaults))}")
