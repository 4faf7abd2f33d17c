"""FTBC on each base (Wu et al., ECCV 2024; METHODS.md section 5).

FTBC composes with any base method: :func:`with_ftbc` keeps the base's ANN,
thresholds and neuron and replaces its calibration stages by the FTBC stage
(``ftbc.calibration``), with the release's alpha / iterations / batches for
the base and dataset. The paper's rows:

- ``ftbc_relu`` ("Ours*"): SNNC's MSE-searched, channel-wise thresholds and
  neuron (shift theta/2T on), FTBC instead of SNNC's BC/PC;
- ``ftbc_qcfs`` ("Ours (+QCFS)"): theta = lambda, v(0) = theta/2;
- ``ftbc_rts`` ("Ours (+RTS)"): RTS thresholds and shift.

``*_quantile`` solve each bias in closed form (see ``ftbc.calibration``) instead
of the paper's iterative rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from baselines import Method, Stage, register_method
from baselines.qcfs import QCFS
from baselines.rts import RTS
from baselines.snnc import SNNC_LIGHT

REFERENCE = "Wu et al., FTBC: Forward Temporal Bias Correction for Optimizing ANN-SNN Conversion, ECCV 2024"


def with_ftbc(base: Method, name: str, params: Mapping[str, Any],
              per_dataset: Mapping[str, Mapping[str, Any]] | None = None, **changes: Any) -> Method:
    """``base`` with its calibration replaced by FTBC (``params``: the stage's settings)."""
    overrides = {ds: {f"ftbc.{k}": v for k, v in p.items()} for ds, p in (per_dataset or {}).items()}
    return dataclasses.replace(
        base,
        name=name,
        stages=(Stage("ftbc", dict(params)),),
        dataset_overrides=overrides,
        summary=f"FTBC on {base.name}: " + base.summary,
        reference=REFERENCE,
        **changes,
    )


# alpha_step, iterations, batches per iteration, batch size: the release scripts' values.
RELU_CIFAR = dict(alpha=0.5, iterations=100, batches=5, batch_size=128)
RELU_IMAGENET = dict(alpha=0.5, iterations=10, batches=10, batch_size=128)
QCFS_IMAGENET = dict(alpha=0.4, iterations=1, batches=3, batch_size=32)  # no CIFAR script: same values
RTS_CIFAR = dict(alpha=0.005, iterations=50, batches=2, batch_size=32)
RTS_IMAGENET = dict(alpha=0.5, iterations=3, batches=10, batch_size=128)
QUANTILE = dict(solver="quantile", iterations=1, batches=4, batch_size=128)  # 512 pooled images

VARIANTS = [
    # name, base, paper params, ImageNet params, extra changes to the base
    ("ftbc_relu", SNNC_LIGHT, RELU_CIFAR, RELU_IMAGENET, dict(channelwise=True)),
    ("ftbc_qcfs", QCFS, QCFS_IMAGENET, QCFS_IMAGENET, {}),
    ("ftbc_rts", RTS, RTS_CIFAR, RTS_IMAGENET, {}),
]

for _name, _base, _cifar, _imagenet, _changes in VARIANTS:
    register_method(with_ftbc(_base, _name, _cifar, {"imagenet": _imagenet}, **_changes))
for _name, _base, _cifar, _imagenet, _changes in VARIANTS:
    register_method(with_ftbc(_base, f"{_name}_quantile", {**_cifar, **QUANTILE}, None, **_changes))
