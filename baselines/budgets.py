"""Named calibration budgets: the one place the suite cuts the methods' release settings.

A budget is a name -> per-method overrides, in :meth:`ftbc.snn.method.Method.with_overrides`
form (a field such as ``threshold_positions`` or ``<stage>.<param>`` such as
``ftbc.iterations``). ``release`` changes nothing; the others are the CPU cuts the
drivers run with: the quickstart (``cpu_quick``), the default grid (``cpu_grid``,
``config/config.yaml``), the smoke grid on a 1,500-image slice (``cpu_smoke``) and the
solver comparison of ``config/ftbc-solvers.yaml`` (``cpu_mse``). A method a budget
does not name runs its release settings. :func:`resolve_method` is how every driver
gets a method: the registry's, for the dataset, the budget's overrides, then the
caller's own (``--set``, a configuration's ``method_settings``) on top. Which budget
ran is recorded with the method in each ``result.json`` (docs/methods.md, "Budgets").
"""

from __future__ import annotations

from typing import Any, Mapping

from ftbc.errors import UserError
from ftbc.snn.method import Method

RELEASE = "release"

# The MSE threshold search on at most this many positions per channel and batch (the release: all).
_MSE_16K = {"threshold_positions": 16384}
_MSE_4K = {"threshold_positions": 4096}

BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    RELEASE: {},
    # ftbc quickstart: FTBC's iterative rule where the release runs more than 4,096 images per T
    # (100 x 5 x 128 for ReLU nets, 50 x 3 x 32 for RTS) on 4 iterations x 2 batches (the QCFS
    # settings are smaller and run as published); SNNC's MSE search on 16,384 positions; RTS's
    # maxima from 40 batches of 128 instead of every training image.
    "cpu_quick": {
        "snnc_light": dict(_MSE_16K),
        "snnc_advanced": dict(_MSE_16K),
        "rts": {"threshold_batches": 40},
        "ftbc_relu": {**_MSE_16K, "ftbc.iterations": 4, "ftbc.batches": 2},
        "ftbc_rts": {"ftbc.iterations": 4, "ftbc.batches": 2},
        "ftbc_relu_quantile": dict(_MSE_16K),
    },
    # the default grid (config/config.yaml, about 15 minutes on 2 cores): the MSE search on 4,096
    # positions, FTBC (ReLU) 4 iterations x 2 batches, FTBC (RTS) 10 iterations, the quantile
    # solver on 2 batches (256 pooled images), RTS's maxima from 40 batches of 128 (5,120 images).
    "cpu_grid": {
        "snnc_light": dict(_MSE_4K),
        "snnc_advanced": dict(_MSE_4K),
        "ftbc_relu": {**_MSE_4K, "ftbc.iterations": 4, "ftbc.batches": 2},
        "ftbc_relu_quantile": {**_MSE_4K, "ftbc.batches": 2},
        "ftbc_qcfs_quantile": {"ftbc.batches": 2},
        "rts": {"threshold_batches": 40},
        "ftbc_rts": {"ftbc.iterations": 10},
        "ftbc_rts_quantile": {"ftbc.batches": 2},
    },
    # the smoke grid (config/smoke.yaml): a 1,500-image slice cannot feed the release's calibration
    # sizes; thresholds from 2 batches, the MSE search on 1,024 positions, FTBC 2 iterations / 2 batches.
    "cpu_smoke": {
        "snnc_light": {"threshold_positions": 1024, "threshold_batches": 2},
        "snnc_advanced": {"threshold_positions": 1024, "threshold_batches": 2},
        "ftbc_relu": {"threshold_positions": 1024, "threshold_batches": 2, "ftbc.iterations": 2, "ftbc.batches": 2},
        "ftbc_relu_quantile": {"threshold_positions": 1024, "threshold_batches": 2, "ftbc.batches": 2},
        "ftbc_qcfs_quantile": {"ftbc.batches": 2},
        "rts": {"threshold_batches": 2},
        "ftbc_rts": {"threshold_batches": 2, "ftbc.iterations": 2},
        "ftbc_rts_quantile": {"threshold_batches": 2, "ftbc.batches": 2},
    },
    # config/ftbc-solvers.yaml: FTBC's release settings; only SNNC's MSE threshold search
    # (under ftbc_relu) on 16,384 positions.
    "cpu_mse": {
        "snnc_light": dict(_MSE_16K),
        "snnc_advanced": dict(_MSE_16K),
        "ftbc_relu": dict(_MSE_16K),
        "ftbc_relu_quantile": dict(_MSE_16K),
    },
}


def list_budgets() -> list[str]:
    return list(BUDGETS)


def budget_overrides(budget: str | None, method: str) -> dict[str, Any]:
    """What ``budget`` changes in ``method`` (``{}`` for ``release`` and for a method it does not name)."""
    name = budget or RELEASE
    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}; budgets: {', '.join(BUDGETS)}")
    return dict(BUDGETS[name].get(method, {}))


def apply_overrides(method: Method, *layers: Mapping[str, Any] | None) -> Method:
    """``method`` with each layer of overrides applied in turn, later ones on top."""
    for layer in layers:
        if layer:
            method = method.with_overrides(layer)
    return method


def resolve_method(name: str, dataset: str | None = None, budget: str | None = RELEASE,
                   overrides: Mapping[str, Any] | None = None) -> Method:
    """The registered method ``name`` with its settings for ``dataset``, cut to ``budget``, and
    ``overrides`` on top. An unknown method or budget is a UserError; a setting the method does not
    have is a ValueError (as from :meth:`Method.with_overrides`)."""
    from baselines import get_method

    return apply_overrides(get_method(name, dataset), budget_overrides(budget, name), overrides)
