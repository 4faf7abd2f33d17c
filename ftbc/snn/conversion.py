"""The one ANN -> SNN conversion driver.

Fixed order (every method goes through it; methods differ only in the
:class:`~ftbc.snn.method.Method` values):

1. fold BatchNorm into the preceding convolution / linear layer (torch.fx);
2. observe the ANN's post-activation values on calibration images and pick
   each layer's threshold by the method's rule (:mod:`ftbc.snn.thresholds`);
3. replace every activation (ReLU, QCFS, clipped ReLU) by an
   :class:`~ftbc.snn.neuron.IFNeuron` with theta, v0 = v0_frac * theta and the
   per-step shift theta / (2T) if the method uses one (except, when the
   method's ``shift_after_add`` is off, at neurons fed by a residual
   addition); the classifier stays non-spiking unless the method says
   otherwise (RTS);
4. run the method's calibration stages (:mod:`ftbc.snn.calibration`).

The result keeps the folded ANN beside the SNN: calibration targets and the
ANN accuracy come from exactly the network that was converted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, fx, nn

from ftbc.data.calibration_pool import draw_batches
from ftbc.snn.graph import activation_sites, fed_by_addition, fold_bn, place_neurons
from ftbc.snn.method import Method
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.stages import run_stages
from ftbc.snn.thresholds import batch_threshold

EMA_MOMENTUM = 0.9


# -- drawing calibration images ----------------------------------------------------------


# -- thresholds -------------------------------------------------------------------------

@torch.no_grad()
def observe_thresholds(gm: fx.GraphModule, method: Method, batches: Iterable[Tensor], T: int) -> dict[str, Tensor]:
    """Per activation site (and ``'output'`` for a spiking classifier), the method's threshold."""
    sites = dict(activation_sites(gm))
    if not sites:
        raise ValueError("the network has no ReLU / QCFS / clipped-ReLU activations to convert")
    stats: dict[str, Tensor] = {}

    def combine(name: str, value: Tensor) -> None:
        old = stats.get(name)
        if old is None:
            stats[name] = value
        elif method.threshold_reduce == "max":
            stats[name] = torch.maximum(old, value)
        else:
            stats[name] = EMA_MOMENTUM * old + (1 - EMA_MOMENTUM) * value

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, inputs: Any, out: Tensor) -> None:
            combine(name, batch_threshold(method.threshold, out, method.threshold_settings, module=module, T=T,
                                          channelwise=method.channelwise, percentile=method.percentile,
                                          max_positions=method.threshold_positions))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in sites.items()]
    try:
        for x in batches:
            logits = gm(x)
            if method.spiking_classifier:
                combine("output", batch_threshold("max", logits, channelwise=False))
    finally:
        for h in handles:
            h.remove()
    return {k: v.float() for k, v in stats.items()}


# -- building the SNN ---------------------------------------------------------------------


def make_neuron(theta: Tensor, method: Method, T: int, *, after_add: bool = False) -> IFNeuron:
    """The IF neuron of one activation site; ``after_add``: its input current is a residual sum."""
    theta = theta.detach().float().clamp_min(1e-6)
    shifted = method.shift and (method.shift_after_add or not after_add)
    offset = theta / (2 * T) if shifted else torch.zeros(())
    return IFNeuron(threshold=theta, v0=method.v0 * theta, offset=offset)


def swap_activations(gm: fx.GraphModule, thresholds: dict[str, Tensor], method: Method, T: int) -> fx.GraphModule:
    """A copy of ``gm`` with every activation replaced by the method's IF neuron."""
    after_add = fed_by_addition(gm)
    return place_neurons(gm, lambda name: make_neuron(thresholds[name], method, T, after_add=name in after_add),
                         spiking_classifier="output" in thresholds)


@dataclass
class CalibrationContext:
    """What a calibration stage may use. Images come from the training split only."""

    ann: fx.GraphModule
    data: Any
    T: int
    seed: int = 0
    device: torch.device | str = "cpu"
    holdout: tuple[Tensor, Tensor] | None = None
    progress: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Converted:
    snn: fx.GraphModule
    ann: fx.GraphModule
    method: Method
    T: int
    timings: dict[str, float]
    log: list[dict[str, Any]]


def convert(
    ann: nn.Module,
    method: Method,
    *,
    data: Any,
    T: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    holdout: tuple[Tensor, Tensor] | None = None,
    progress: bool = False,
) -> Converted:
    """Convert ``ann`` with ``method`` for simulation length ``T`` and calibrate it.

    Args:
        ann: a trained ANN whose activations match ``method.activation``.
        data: calibration source: the training split (test-time transform) or a Tensor of images.
        T: the simulation length the method's T-dependent constants are set for
            (for a T-free method, the longest T to be evaluated).
        holdout: optional (images, labels) slice of the training split for logging/selection.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    gm = fold_bn(ann).to(device)
    batches = (b.to(device) for b in draw_batches(data, method.threshold_batches, method.threshold_batch_size, seed))
    thresholds = observe_thresholds(gm, method, batches, T)
    snn = swap_activations(gm, thresholds, method, T)
    timings["convert_s"] = time.perf_counter() - t0
    ctx = CalibrationContext(ann=gm, data=data, T=T, seed=seed, device=device, holdout=holdout, progress=progress)
    timings.update(run_stages(snn, method.stages, ctx))
    return Converted(snn=snn, ann=gm, method=method, T=T, timings=timings, log=ctx.log)
