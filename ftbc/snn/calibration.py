"""Calibration after conversion: one driver, and FTBC (docs/methods.md section 5).

The driver, :func:`layerwise_pass`, runs one layer-major forward of a
calibration batch through the SNN. When the forward reaches a spiking layer,
that layer's input current over all T steps is already computed from the
*calibrated* layers below it; a stage's update function adjusts the layer's
parameters from that input and the ANN target, and the layer then fires with
its new parameters for the layers above. A pass therefore costs O(layers x T)
layer evaluations, not the release's O(layers^2 x T) full-network steps.

Stages are registered by name (:func:`ftbc.snn.stages.register_stage`); SNN Calibration's bias,
potential and weight calibration live in ``baselines/snnc.py``. They need a
layer's rate over all T steps before the next layer: :func:`rate_pass` gives it
layer-major, or step by step per layer (the release's order, memory
independent of T) above :data:`LAYER_MAJOR_BUDGET`.

FTBC, per spiking layer l, step t and output channel c, adds b_l[t]_c to the
membrane before the threshold test. Two solvers of the one stage:

- ``heuristic`` (the paper's): for each step, fire, take the per-channel error
  e = mean_{N,H,W}(a - theta s(t)) against the ANN activation a, set
  b[t] += alpha * e, and redo step t (re-threshold, re-reset) so step t+1
  starts from the corrected membrane. Biases accumulate over batches and
  iterations.
- ``quantile`` (closed form): with m the membrane before the threshold test at
  step t over all calibration positions, a fraction p = clip(mean(a)/theta, 0, 1)
  should fire, so b[t] = theta - q with q the (1 - p)-quantile of m. One pass,
  no alpha, no iterations.

The solvers' per-layer updates are in :mod:`ftbc.snn.ftbc_solvers`.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ftbc.data.calibration_pool import draw_batches
from ftbc.snn.ftbc_solvers import ftbc_heuristic_update, ftbc_quantile_update, stepwise_ftbc_pass
from ftbc.snn.graph import activation_outputs, activation_sites, intercepted
from ftbc.snn.neuron import IFNeuron, exact, neurons
from ftbc.snn.simulation import LAYER_MAJOR_BUDGET, accuracy_per_step, memory_budget, reset_net, set_step_mode
from ftbc.snn.stages import register_stage

logger = logging.getLogger(__name__)

# update(name, neuron, xs, target); with returns_outputs=True it returns the layer's outputs.
UpdateFn = Callable[[str, IFNeuron, Tensor, Tensor], "Tensor | None"]


# -- the driver ------------------------------------------------------------------------


@torch.no_grad()
def ann_targets(ann: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Post-activation outputs of every activation module of the (folded) ANN, by module name."""
    return activation_outputs(ann, x)


@torch.no_grad()
def layerwise_pass(snn: nn.Module, ann: nn.Module, x: Tensor, T: int, update: UpdateFn, *,
                   returns_outputs: bool = False) -> None:
    """One layer-major forward of ``x`` [N, ...] where each spiking layer with an ANN
    counterpart is updated by ``update(name, neuron, xs, target)`` (xs: its input
    current [T, N, ...]; target: the ANN activation [N, ...]) before it fires.

    ``returns_outputs=True`` promises that ``update`` returns the layer's outputs
    [T, N, ...] under its new parameters (as :func:`ftbc_heuristic_update` does),
    which spares the layer's rerun; otherwise whatever ``update`` returns is ignored.
    """
    targets = ann_targets(ann, x)

    def fire(name: str, n: IFNeuron, current: Tensor) -> Tensor:
        xs = n.split_steps(current)
        out = update(name, n, xs, targets[name])
        if out is None or not returns_outputs:
            out = n.run_steps(xs)
        return out.view_as(current)

    fires = {name: functools.partial(fire, name) for name, _ in neurons(snn) if name in targets}
    set_step_mode(snn, "m", T)
    reset_net(snn)
    try:
        with intercepted(snn, fires):
            snn(x.unsqueeze(0).expand(T, *x.shape).reshape(T * x.shape[0], *x.shape[1:]))
    finally:
        set_step_mode(snn, "s")
        reset_net(snn)


# Above LAYER_MAJOR_BUDGET bytes of one layer's activations over all steps, passes run step-major.
ORDERS = ("auto", "layer", "step")


def resolve_order(order: str, ann: nn.Module, x: Tensor, T: int) -> str:
    """``'layer'`` or ``'step'``: ``'auto'`` is the layer order unless one layer's activations
    over all T steps (:func:`layer_major_bytes`) would pass the memory budget
    (:data:`LAYER_MAJOR_BUDGET` on CPU, half the free memory on a CUDA device)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    if order == "auto":
        budget = LAYER_MAJOR_BUDGET if x.device.type != "cuda" else memory_budget(x.device)
        return "step" if layer_major_bytes(ann, x, T) > budget else "layer"
    return order


class _StopForward(Exception):
    """Ends a forward once the layer of interest has run."""


@torch.no_grad()
def ann_output(ann: nn.Module, x: Tensor, name: str) -> Tensor:
    """Output of the (folded) ANN's activation module ``name`` on ``x``; the layers above it do not run."""
    got: dict[str, Tensor] = {}

    def hook(mod: nn.Module, i: Any, o: Tensor) -> None:
        got["a"] = o.detach()
        raise _StopForward

    handle = ann.get_submodule(name).register_forward_hook(hook)
    try:
        ann(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return got["a"]


@dataclass
class TimeMeans:
    """Means over T steps of one spiking layer: its input current, its output theta * s, and
    the inputs of the modules asked for (by name)."""

    current: Tensor
    output: Tensor
    inputs: dict[str, Tensor]


@torch.no_grad()
def time_means(snn: nn.Module, x: Tensor, T: int, name: str, inputs_of: Sequence[str] = ()) -> TimeMeans:
    """Simulate ``x`` [N, ...] step by step, each step stopped once neuron ``name`` has fired,
    and average over the T steps what :class:`TimeMeans` holds.

    Holds the membranes of the layers up to ``name`` and one step's activations: memory
    independent of T (the layer-major pass holds T x N activations of a layer).
    """
    sums: dict[str, Tensor] = {}  # running sums over steps, by module name

    def add(key: str, value: Tensor) -> None:
        value = exact(value)
        sums[key] = sums[key] + value if key in sums else value.clone()

    def at_neuron(mod: nn.Module, i: Any, o: Tensor) -> None:
        add(name, i[0])
        sums["theta*s"] = sums["theta*s"] + o if "theta*s" in sums else o.clone()
        raise _StopForward

    handles = [snn.get_submodule(k).register_forward_hook(lambda mod, i, o, k=k: add(k, i[0]))
               for k in inputs_of if k != name]
    handles.append(snn.get_submodule(name).register_forward_hook(at_neuron))
    set_step_mode(snn, "s")
    reset_net(snn)
    try:
        for _ in range(T):
            try:
                snn(x)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
        reset_net(snn)
    output = sums.pop("theta*s") / T
    return TimeMeans(sums[name] / T, output, {k: sums[k] / T for k in inputs_of})


# update(name, neuron, rate, target): rate [N, ...] the layer's time-averaged output.
RateUpdateFn = Callable[[str, IFNeuron, Tensor, Tensor], None]


@torch.no_grad()
def rate_pass(snn: nn.Module, ann: nn.Module, x: Tensor, T: int, update: RateUpdateFn, *, order: str = "auto") -> str:
    """For each spiking layer with an ANN counterpart, in forward order and with the layers
    below already updated: ``update(name, neuron, rate, target)``, rate the layer's output
    theta * s averaged over T steps [N, ...], target the ANN activation [N, ...].

    ``order='layer'``: one :func:`layerwise_pass` (T x N activations of a layer at once);
    ``'step'``: per layer, a step-by-step run up to it (:func:`time_means`; the release's
    order, O(layers^2 x T) steps, memory independent of T); ``'auto'`` as
    :func:`resolve_order`. Returns the order used.
    """
    order = resolve_order(order, ann, x, T)
    if order == "layer":
        layerwise_pass(snn, ann, x, T, lambda name, n, xs, a: update(name, n, n.run_steps(xs).mean(0), a))
        return order
    sites = {name for name, _ in activation_sites(ann)}
    for name, n in neurons(snn):
        if name in sites:
            update(name, n, time_means(snn, x, T, name).output, ann_output(ann, x, name))
    return order


# -- FTBC -----------------------------------------------------------------------------


def layer_major_bytes(ann: nn.Module, x: Tensor, T: int) -> int:
    """Bytes of the largest layer's activations over all T steps and images of ``x`` in a
    layer-major pass (input, current and output: three such tensors), from a one-image probe."""
    sizes = [a[0].numel() for a in ann_targets(ann, x[:1]).values()]
    return 3 * T * x.shape[0] * max(sizes, default=0) * x.element_size()


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of FTBC iteration ``iteration`` (0-based).

    The release reseeds with seed + iteration before taking the first batches of its
    shuffled, augmenting training loader; its thresholds were drawn earlier in the
    random stream, so iteration 0 sees other images than the thresholds did. Here a
    draw is a function of its seed alone, and the thresholds use ``seed``: the
    iterations start at seed + 1 so the first one is a fresh draw too.
    """
    return seed + 1 + iteration


@dataclass
class _Best:
    acc: float = -1.0
    state: dict[str, Tensor] | None = None
    iteration: int = -1


def _holdout_accuracy(snn: nn.Module, ctx: Any) -> list[float]:
    x, y = ctx.holdout
    return accuracy_per_step(snn, [(x, y)], ctx.T, device=ctx.device).tolist()


@register_stage(
    "ftbc",
    t_dependent=False,
    defaults=dict(solver="heuristic", alpha=0.5, iterations=100, batches=5, batch_size=128, select="last",
                  order="auto"),
)
def ftbc_stage(snn: nn.Module, ctx: Any, *, solver: str, alpha: float, iterations: int, batches: int,
               batch_size: int, select: str, order: str) -> None:
    """FTBC calibration of every spiking layer with an ANN counterpart, for steps 1..T.

    ``select='last'`` keeps the final biases (the suite's default protocol);
    ``'holdout'`` keeps the iteration with the best accuracy at T on ``ctx.holdout``
    (a slice of the training split, never the test set).
    ``order`` (heuristic solver): ``'layer'`` runs each layer over all T steps at
    once (fastest), ``'step'`` all layers one step at a time (memory independent of
    T), ``'auto'`` the layer order unless its activations would pass
    the memory budget of :func:`resolve_order`.
    """
    if solver not in ("heuristic", "quantile"):
        raise ValueError(f"ftbc solver must be 'heuristic' or 'quantile', got {solver!r}")
    if select not in ("last", "holdout"):
        raise ValueError(f"ftbc select must be 'last' or 'holdout', got {select!r}")
    if select == "holdout" and ctx.holdout is None:
        raise ValueError("ftbc select='holdout' needs a held-out slice of the training split")
    if order not in ORDERS:
        raise ValueError(f"ftbc order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    if not (0 < alpha <= 10) or iterations < 1 or batches < 1 or batch_size < 1:
        raise ValueError(f"ftbc needs 0 < alpha <= 10 and positive iterations/batches/batch_size; "
                         f"got alpha={alpha}, iterations={iterations}, batches={batches}, batch_size={batch_size}")
    def draw(iteration: int) -> list[Tensor]:
        return [b.to(ctx.device) for b in draw_batches(ctx.data, batches, batch_size, iteration_seed(ctx.seed, iteration))]

    if solver == "quantile":
        pooled = torch.cat(draw(0))  # one seeded draw of batches x batch_size images
        layerwise_pass(snn, ctx.ann, pooled, ctx.T, lambda name, n, xs, a: ftbc_quantile_update(n, xs, a))
        if ctx.holdout is not None:
            ctx.log.append({"stage": "ftbc", "solver": solver, "iteration": 1, "holdout_acc": _holdout_accuracy(snn, ctx)})
        return
    best = _Best()
    steps = range(iterations)
    if ctx.progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="FTBC", leave=False, disable=not sys.stderr.isatty())
    for it in steps:
        for x in draw(it):  # fresh, shuffled, augmented batches every iteration, as the release
            if order == "auto":
                order = resolve_order(order, ctx.ann, x, ctx.T)
                ctx.log.append({"stage": "ftbc", "order": order})
            if order == "step":
                stepwise_ftbc_pass(snn, ctx.ann, x, ctx.T, alpha)
            else:
                layerwise_pass(snn, ctx.ann, x, ctx.T,
                               lambda name, n, xs, a: ftbc_heuristic_update(n, xs, a, alpha), returns_outputs=True)
        held = ""
        if ctx.holdout is not None:
            acc = _holdout_accuracy(snn, ctx)
            ctx.log.append({"stage": "ftbc", "solver": solver, "iteration": it + 1, "holdout_acc": acc})
            held = f", held-out accuracy at T: {acc[-1]:.2f} %"
            if select == "holdout" and acc[-1] > best.acc:
                best = _Best(acc[-1], {f"{k}.bias": n.bias.clone() for k, n in neurons(snn)}, it + 1)
        logger.info("T=%d: FTBC iteration %d/%d%s", ctx.T, it + 1, iterations, held)
    if select == "holdout" and best.state is not None:
        snn.load_state_dict(best.state, strict=False)
        ctx.log.append({"stage": "ftbc", "selected_iteration": best.iteration, "holdout_acc_at_T": best.acc})
