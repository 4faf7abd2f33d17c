"""The one ANN -> SNN conversion driver.

Fixed order (every method goes through it; methods differ only in the
:class:`~ftbc.method.Method` values):

1. fold BatchNorm into the preceding convolution / linear layer (torch.fx);
2. observe the ANN's post-activation values on calibration images and pick
   each layer's threshold by the method's rule (:mod:`ftbc.thresholds`);
3. replace every activation (ReLU, QCFS, clipped ReLU) by an
   :class:`~ftbc.neuron.IFNeuron` with theta, v0 = v0_frac * theta and the
   per-step shift theta / (2T) if the method uses one (except, when the
   method's ``shift_after_add`` is off, at neurons fed by a residual
   addition); the classifier stays non-spiking unless the method says
   otherwise (RTS);
4. run the method's calibration stages (:mod:`ftbc.calibration`).

The result keeps the folded ANN beside the SNN: calibration targets and the
ANN accuracy come from exactly the network that was converted.
"""

from __future__ import annotations

import copy
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.optimization import fuse

from ftbc.snn.method import Method
from ftbc.models.activations import is_activation
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.thresholds import batch_threshold

EMA_MOMENTUM = 0.9


class _Tracer(fx.Tracer):
    """Keeps activations and neurons as leaves, so they can be swapped by name."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_activation(m) or isinstance(m, IFNeuron) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _Tracer().trace(model), class_name=type(model).__name__)


def fold_bn(ann: nn.Module) -> fx.GraphModule:
    """A copy of ``ann`` in eval mode with every Conv/Linear -> BatchNorm pair fused."""
    ann = copy.deepcopy(ann).eval()
    gm = fuse(trace(ann), inplace=True, no_trace=True)
    return gm.eval()


def module_nodes(gm: fx.GraphModule, keep: Callable[[nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """Submodules called in the graph for which ``keep(module)`` holds, in forward order."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if keep(m):
                out.append((node.target, m))
    return out


def activation_sites(gm: fx.GraphModule) -> list[tuple[str, nn.Module]]:
    return module_nodes(gm, is_activation)


def spiking_layers(snn: fx.GraphModule) -> list[tuple[str, IFNeuron]]:
    return module_nodes(snn, lambda m: isinstance(m, IFNeuron))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# -- drawing calibration images ----------------------------------------------------------

def draw_batches(data: Any, n_batches: int | None, batch_size: int, seed: int) -> Iterable[Tensor]:
    """``n_batches`` batches drawn by ``seed`` from ``data``: a :class:`~ftbc.calibration_pool.CalibrationPool`,
    a Tensor of images (already transformed) or a training Dataset with a float transform.
    ``n_batches=None``: every image once (a generator for a pool: one batch in memory at a time)."""
    from ftbc.data.calibration_pool import CalibrationPool

    if isinstance(data, CalibrationPool):
        return data.iter_all(batch_size, seed) if n_batches is None else data.draw(n_batches, batch_size, seed)
    if isinstance(data, Tensor):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=g)
        idx = idx if n_batches is None else idx[: n_batches * batch_size]
        return [data[i] for i in idx.split(batch_size)]
    from ftbc.data.datasets import calibration_batches

    if n_batches is None:
        n_batches = len(data) // batch_size

    return calibration_batches(data, n_batches=n_batches, batch_size=batch_size, seed=seed)


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

# Graph calls that sum two currents: a residual block's main path and its shortcut.
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


def is_addition(node: Any) -> bool:
    """Whether ``node`` (an fx node, or any other argument) is an addition: ``a + b``, ``torch.add``, ``a.add(b)``."""
    if not isinstance(node, fx.Node):
        return False
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ADD_METHODS))


def fed_by_addition(gm: fx.GraphModule) -> set[str]:
    """Names of the submodules whose (first) input in the graph is an addition: the post-residual activations."""
    return {n.target for n in gm.graph.nodes if n.op == "call_module" and n.args and is_addition(n.args[0])}


def make_neuron(theta: Tensor, method: Method, T: int, *, after_add: bool = False) -> IFNeuron:
    """The IF neuron of one activation site; ``after_add``: its input current is a residual sum."""
    theta = theta.detach().float().clamp_min(1e-6)
    shifted = method.shift and (method.shift_after_add or not after_add)
    offset = theta / (2 * T) if shifted else torch.zeros(())
    return IFNeuron(threshold=theta, v0=method.v0 * theta, offset=offset)


OUTPUT_NEURON = "output_neuron"  # the spiking classifier's neuron (RTS), after the last layer


def place_neurons(gm: fx.GraphModule, make: Callable[[str], IFNeuron], *, spiking_classifier: bool) -> fx.GraphModule:
    """A copy of ``gm`` with the activation at each site ``name`` replaced by ``make(name)``, and with
    ``make('output')`` after the classifier when ``spiking_classifier``."""
    snn = copy.deepcopy(gm)
    for name, _ in activation_sites(snn):
        _set_submodule(snn, name, make(name))
    if spiking_classifier:
        snn.add_submodule(OUTPUT_NEURON, make("output"))
        out_node = next(n for n in snn.graph.nodes if n.op == "output")
        with snn.graph.inserting_before(out_node):
            spk = snn.graph.call_module(OUTPUT_NEURON, (out_node.args[0],))
        out_node.args = (spk,)
    snn.graph.lint()
    snn.recompile()
    return snn.eval()


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
    from ftbc.snn.calibration import run_stages

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
