"""FTBC's two solvers, per spiking layer and step (docs/methods.md section 5; the stage that
drives them is :func:`ftbc.snn.calibration.ftbc_stage`).

- ``heuristic``: fire, take the per-channel error against the ANN activation, move the
  bias by ``alpha`` times it and redo the step (:func:`ftbc_heuristic_update`, or
  :func:`stepwise_ftbc_pass` step by step when a layer's T steps do not fit in memory);
- ``quantile``: the closed-form bias that makes the ANN's rate fire (:func:`ftbc_quantile_update`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ftbc.snn.graph import activation_outputs, intercepted
from ftbc.snn.neuron import IFNeuron, channel_view, exact, if_step_, neurons
from ftbc.snn.simulation import reset_net, set_step_mode


def channel_mean(x: Tensor) -> Tensor:
    """Mean over every dim but the channel dim 1: [N, C, *spatial] -> [C]."""
    return x.mean(dim=[0, *range(2, x.dim())])


def ensure_bias(n: IFNeuron, T: int, channels: int) -> None:
    """Grow the neuron's FTBC bias buffer to at least [T, channels] (zeros for new steps)."""
    old = n.bias
    if old.shape[0] >= T and old.shape[1:] == (channels,):
        return
    new = torch.zeros(max(T, old.shape[0]), channels, device=n.threshold.device, dtype=n.threshold.dtype)
    if old.numel():
        new[: old.shape[0]] = old
    n.bias = new


def channel_threshold(n: IFNeuron, channels: int) -> Tensor:
    return n.threshold.expand(channels) if n.threshold.dim() == 0 else n.threshold


def ftbc_heuristic_step(n: IFNeuron, v: Tensor, x: Tensor, t: int, goal: Tensor, alpha: float,
                        out: Tensor | None = None) -> Tensor:
    """The paper's rule at one step: fire, b[t] += alpha * (goal - mean_{N,H,W} theta s), redo step t.

    ``v`` (the membrane before step t) is advanced in place; returns the redone step's
    output theta * s. The x + offset part of the current is formed once and the trial
    spikes go through a scratch buffer: the same floating-point operations as firing
    with :func:`if_step` twice.
    """
    nd = x.dim()
    theta = n.theta(nd)
    base = n.current(x)
    m = v + (base + channel_view(n.bias[t], nd))
    trial = torch.ge(m, theta, out=m).mul_(theta)  # s * theta of the trial step (m is not needed again)
    n.bias[t] += alpha * (goal - channel_mean(trial))
    return if_step_(v, base + channel_view(n.bias[t], nd), theta, out=out)  # redo step t


def ftbc_heuristic_update(n: IFNeuron, xs: Tensor, target: Tensor, alpha: float) -> Tensor:
    """The paper's rule over one batch, all steps of one layer (:func:`ftbc_heuristic_step` for each t).

    Returns the layer's outputs theta * s [T, N, ...] of the redone steps, which
    are exactly what the layer computes with the corrected biases, so
    :func:`layerwise_pass` need not rerun it.
    """
    T, C = xs.shape[0], xs.shape[2]
    ensure_bias(n, T, C)
    goal = channel_mean(target)
    v = n.initial_membrane(xs[0])
    out = torch.empty_like(xs)
    for t in range(T):
        ftbc_heuristic_step(n, v, xs[t], t, goal, alpha, out=out[t])
    return out


@torch.no_grad()
def ann_channel_means(ann: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per activation module of the ANN, the channel means of its output on ``x`` ([C]), computed
    as each layer runs: no layer's output outlives its hook (ImageNet VGG-16's activations for 128
    images are about 7 GB)."""
    return activation_outputs(ann, x, channel_mean)


@torch.no_grad()
def stepwise_ftbc_pass(snn: nn.Module, ann: nn.Module, x: Tensor, T: int, alpha: float) -> None:
    """One FTBC heuristic pass over ``x`` in step-major order: for t, for each layer in forward order.

    The update of b_l[t] uses only step t of layer l, whose input depends only on the
    layers below at steps <= t; so this order gives the biases of :func:`layerwise_pass`
    with :func:`ftbc_heuristic_update` (the same operations, up to the rounding of a
    convolution run on N instead of T x N images; tested), while holding one step's
    activations instead of all T steps of a layer: memory independent of T.
    """
    goals = ann_channel_means(ann, x)

    def fire(name: str, n: IFNeuron, xt: Tensor) -> Tensor:  # step n.t of layer ``name``
        xt = exact(xt)
        if n.t == 0:
            ensure_bias(n, T, xt.shape[1])
        out = ftbc_heuristic_step(n, n.membrane(xt), xt, n.t, goals[name], alpha)
        n.t += 1
        return out

    fires = {name: functools.partial(fire, name) for name, _ in neurons(snn) if name in goals}
    set_step_mode(snn, "s")
    reset_net(snn)
    try:
        with intercepted(snn, fires):
            for _ in range(T):
                snn(x)
    finally:
        reset_net(snn)


def quantile_bias(m: Tensor, p: Tensor, theta: Tensor) -> Tensor:
    """Bias per channel so that the fraction of positions with m + b >= theta is nearest ``p``.

    m: membranes [C, M]; p: target fractions [C]; theta: [C]. The cut is placed
    halfway between neighbouring values so rounding cannot flip a position;
    tied values all fire or all stay, whichever lands nearer the target.
    A selection (``kthvalue``) and a few counting passes, not a sort: sorting
    the pooled positions took over half of a T=32 calibration on CPU.
    """
    C, M = m.shape
    k = torch.round(p.clamp(0, 1) * M).long()  # how many should fire
    # the k-th largest value per channel (kthvalue counts from the smallest); any value when k = 0
    kth = torch.stack([row.kthvalue(M - kk + 1).values if kk > 0 else row.amax()
                       for row, kk in zip(m, k.tolist())]).unsqueeze(1)
    above = (m > kth).sum(1)
    at_or_above = above + (m == kth).sum(1)
    take_ties = (at_or_above - k).abs() <= (k - above).abs()
    n_fire = torch.where(take_ties, at_or_above, above)
    n_fire = torch.where(k == 0, torch.zeros_like(k), n_fire)
    # cut between the lowest firing value (hi) and the highest quiet one (lo)
    inf = torch.tensor(float("inf"), dtype=m.dtype, device=m.device)
    below_kth = torch.where(m < kth, m, -inf).amax(1)  # highest quiet value when the ties fire
    above_kth = torch.where(m > kth, m, inf).amin(1)   # lowest firing value when they do not
    kth = kth.squeeze(1)
    hi = torch.where(take_ties, kth, above_kth)
    lo = torch.where(take_ties, below_kth, kth)
    top, bottom = m.amax(1), m.amin(1)
    span = (top - bottom).abs() + theta.abs() + 1.0
    hi = torch.where(n_fire > 0, hi, top + span)
    lo = torch.where(n_fire == 0, top, torch.where(n_fire < M, lo, bottom - span))
    return theta - (hi + lo) / 2


def ftbc_quantile_update(n: IFNeuron, xs: Tensor, target: Tensor) -> None:
    """Closed-form FTBC over the whole batch: b[t] from the (1 - p)-quantile of the membrane."""
    T, C = xs.shape[0], xs.shape[2]
    ensure_bias(n, T, C)
    n.bias[:T] = 0
    theta_c = channel_threshold(n, C)
    p = (channel_mean(target) / theta_c).clamp(0, 1)
    nd = xs.dim() - 1
    theta = n.theta(nd)
    v = n.initial_membrane(xs[0])
    for t in range(T):
        base = n.current(xs[t])
        m = v + base  # the membrane before the threshold test with b[t] = 0
        n.bias[t] = quantile_bias(m.transpose(0, 1).reshape(C, -1), p, theta_c)
        if_step_(v, base + channel_view(n.bias[t], nd), theta)  # fire as the simulation will
