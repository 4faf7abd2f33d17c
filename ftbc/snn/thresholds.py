"""Threshold rules: how theta is chosen from a layer's ANN activations.

Each rule maps one calibration batch of post-activation values ``a``
[N, C, *spatial] (or [N, C]) to a per-batch threshold, scalar or per channel
[C]; the conversion driver combines batches with an EMA (momentum 0.9, as the
releases do) or a running maximum.

- ``max``: the batch maximum (the no-calibration "max-norm" baseline).
- ``percentile``: the p-th percentile of the batch (robust max-norm).
- ``mse``: SNN Calibration's search: theta in {max * (1 - 0.01 k), k = 0..94}
  minimising || a - theta * clip(floor(a T / theta) / T, 0, 1) ||^2. Depends on T.
- ``lambda``: the trained clipping level of a QCFS activation (theta = lambda).

Rules are registered by name (:func:`register_threshold_rule`), so a new one
(from a plugin module too) needs no edit here.

Channel-wise thresholds (``channelwise=True``) apply to 4-D activations only,
the outputs of convolutions [N, C, H, W]; a linear layer's [N, F] output keeps
one threshold per layer. This is the SNN Calibration release's rule for its MSE
search (``channel_wise and tensor.dim() == 4``) and the suite applies it to every
rule (:func:`channelwise_for`). For ``max`` and ``percentile`` the channel-wise
variant itself is the suite's: the release's max and percentile paths are always
per layer (``maxnorm`` and ``snnc_none`` use them so). ``lambda`` has one value
per layer anyway; channel-wise it is repeated over a convolution's channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

MSE_GRID = 95  # k = 0..94
MSE_STEP = 0.01


def channelwise_for(a: Tensor, channelwise: bool) -> bool:
    """Whether ``a`` gets one threshold per channel: asked for, and a convolution's 4-D output."""
    return bool(channelwise) and a.dim() == 4


def per_channel(a: Tensor) -> Tensor:
    """[N, C, *spatial] -> [C, N * prod(spatial)]."""
    return a.transpose(0, 1).reshape(a.shape[1], -1)


def _max(a: Tensor, *, channelwise: bool, **_) -> Tensor:
    return per_channel(a).amax(1) if channelwise else a.max()


def _percentile(a: Tensor, *, channelwise: bool, percentile: float = 99.99, **_) -> Tensor:
    flat = per_channel(a) if channelwise else a.reshape(1, -1)
    k = max(1, min(flat.shape[1], int(round(percentile / 100.0 * flat.shape[1]))))
    vals = flat.float().kthvalue(k, dim=1).values
    return vals if channelwise else vals[0]


def quantisation_error(a: Tensor, theta: Tensor, T: int) -> Tensor:
    """Squared error of the T-level clip-floor quantiser, summed per row of ``a`` [R, M]; theta [R]."""
    th = theta.clamp_min(1e-12).unsqueeze(1)
    q = th * torch.clamp(torch.floor(a * T / th) / T, 0, 1)
    return (a - q).pow(2).sum(1)


def _scaled_error(a: Tensor, theta: Tensor, T: int, buf: Tensor) -> Tensor:
    """Same value as :func:`quantisation_error` for a >= 0, with fewer passes over memory.

    With u = a T / theta: a - q = (theta / T) (u - min(floor(u), T)).
    """
    th = theta.clamp_min(1e-12)
    torch.mul(a, (T / th).unsqueeze(1), out=buf)
    r = torch.floor(buf).clamp_(max=T)
    torch.sub(buf, r, out=buf)
    return (th / T) ** 2 * torch.linalg.vector_norm(buf, dim=1).pow(2)


def mse_search(a: Tensor, T: int, *, channelwise: bool, max_positions: int | None = None) -> Tensor:
    """SNNC's grid search; returns the minimiser (scalar, or [C] if channel-wise and ``a`` is 4-D).

    ``max_positions`` (None: all, as the release) searches on a fixed random subset
    of that many positions per row: a CPU shortcut, recorded with the method.
    """
    channelwise = channelwise_for(a, channelwise)  # the release: channel-wise only for 4-D activations
    rows = per_channel(a) if channelwise else a.reshape(1, -1)
    rows = rows.float()
    if max_positions and rows.shape[1] > max_positions:
        keep = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:max_positions]
        rows = rows[:, keep.to(rows.device)]
    if not channelwise:  # zeros cost nothing and are most of a ReLU output
        rows = rows[rows > 0].reshape(1, -1)
        if rows.numel() == 0:
            return torch.zeros(())
    top = rows.amax(1)
    best_err = torch.full_like(top, float("inf"))
    best = top.clone()
    buf = torch.empty_like(rows)
    for k in range(MSE_GRID):
        cand = top * (1 - MSE_STEP * k)
        err = _scaled_error(rows, cand, T, buf)
        better = err < best_err
        best = torch.where(better, cand, best)
        best_err = torch.where(better, err, best_err)
    return best if channelwise else best[0]


def _mse(a: Tensor, *, channelwise: bool, T: int, max_positions: int | None = None, **_) -> Tensor:
    return mse_search(a, T, channelwise=channelwise, max_positions=max_positions)


def _lambda(a: Tensor, *, module: nn.Module, channelwise: bool, **_) -> Tensor:
    lam = getattr(module, "lam", None)
    if lam is None:
        raise ValueError(f"threshold rule 'lambda' needs a QCFS activation, got {type(module).__name__}")
    theta = lam.detach().reshape(())
    return theta.expand(a.shape[1]).clone() if channelwise else theta.clone()


@dataclass(frozen=True)
class ThresholdRule:
    """A registered rule: ``fn(a, *, channelwise, T, module, **settings) -> theta`` per batch."""

    fn: Callable[..., Tensor]
    t_dependent: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)


RULES: dict[str, ThresholdRule] = {}


def register_threshold_rule(name: str, fn: Callable[..., Tensor] | None = None, *, t_dependent: bool = False,
                            defaults: Mapping[str, Any] | None = None):
    """Register a threshold rule by name, as methods and calibration stages are registered.

    ``fn(a, *, channelwise, T, module, **settings)`` maps one batch of post-activation
    values ``a`` to theta (scalar, or [C] when ``channelwise``); ``defaults`` are its
    settings, which a method overrides with ``threshold_settings``; ``t_dependent``
    says the threshold depends on T (each T then gets its own conversion). Usable as a
    decorator. A rule defined outside the repository registers itself from a plugin
    module (``FTBC_PLUGINS``), like a method.
    """

    def deco(f: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in RULES:
            raise ValueError(f"threshold rule {name!r} is already registered")
        RULES[name] = ThresholdRule(f, t_dependent, dict(defaults or {}))
        return f

    return deco(fn) if fn is not None else deco


register_threshold_rule("max", _max)
register_threshold_rule("percentile", _percentile)
register_threshold_rule("mse", _mse, t_dependent=True)
register_threshold_rule("lambda", _lambda)


def get_rule(rule: str) -> ThresholdRule:
    try:
        return RULES[rule]
    except KeyError:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {sorted(RULES)}") from None


def batch_threshold(rule: str, a: Tensor, settings: Mapping[str, Any] | None = None, **kwargs) -> Tensor:
    """Apply ``rule`` to one batch of activations (see module docstring), with the rule's
    defaults overridden by ``settings`` (a method's ``threshold_settings``)."""
    spec = get_rule(rule)
    unknown = sorted(set(settings or {}) - set(spec.defaults))
    if unknown:
        raise ValueError(f"threshold rule {rule!r} has no setting(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(spec.defaults)) or 'none'}")
    if "channelwise" in kwargs:
        kwargs["channelwise"] = channelwise_for(a, kwargs["channelwise"])
    return spec.fn(a.detach(), **{**spec.defaults, **(settings or {}), **kwargs})
