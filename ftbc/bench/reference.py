"""Plain references the benchmarks time the suite against, written as the original releases run.

Both share nothing with :mod:`ftbc.snn.neuron` beyond reading a converted
neuron's parameters, so they double as independent checks in the tests.

- :func:`stepwise_simulate`: the whole network advances one step at a time
  with an out-of-place IF neuron (``v = v + x``; ``s = (v >= theta)``;
  ``v = v - s * theta``), the loop of the SNNC/QCFS/FTBC releases.
- :func:`release_ftbc_pass`: one FTBC calibration pass done the release's
  way (docs/methods.md section 5.5, "cost trap"): for every spiking layer and every
  step, recompute the ANN forward for the target and advance the *whole*
  network one step, O(layers^2 x T) layer evaluations per batch.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ftbc.snn.neuron import IFNeuron


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    return p.reshape(1, -1, *[1] * (x.dim() - 2)) if p.dim() == 1 else p


class PlainIF(nn.Module):
    """IF neuron with soft reset, out of place, holding its own copy of a converted neuron's values.

    With ``goal`` set (the ANN's per-channel mean activation, [C]) it applies the
    FTBC rule at every step: fire, b[t] += alpha * (goal - mean(theta s)), redo.
    """

    def __init__(self, n: IFNeuron):
        super().__init__()
        self.theta, self.v0, self.offset = n.threshold.clone(), n.v0.clone(), n.offset.clone()
        self.bias = n.bias.clone()
        self.goal: Tensor | None = None
        self.alpha = 0.0
        self.v: Tensor | None = None
        self.t = 0

    def reset(self) -> None:
        self.v, self.t = None, 0

    def _current(self, x: Tensor) -> Tensor:
        cur = x + _per_channel(self.offset, x)
        if self.t < self.bias.shape[0]:
            cur = cur + _per_channel(self.bias[self.t], x)
        return cur

    def forward(self, x: Tensor) -> Tensor:
        if self.v is None:
            self.v = torch.zeros_like(x) + _per_channel(self.v0, x)
        th = _per_channel(self.theta, x)
        m = self.v + self._current(x)
        spike = (m >= th).to(x.dtype)
        if self.goal is not None:
            if self.bias.shape[0] <= self.t:
                grown = self.theta.new_zeros(self.t + 1, x.shape[1])
                if self.bias.numel():
                    grown[: self.bias.shape[0]] = self.bias
                self.bias = grown
            rate = (spike * th).mean(dim=[0, *range(2, x.dim())])
            self.bias[self.t] += self.alpha * (self.goal - rate)
            m = self.v + self._current(x)  # redo step t with the corrected bias
            spike = (m >= th).to(x.dtype)
        self.v = m - spike * th
        self.t += 1
        return spike * th


def plain_copy(snn: nn.Module) -> nn.Module:
    """A deep copy of ``snn`` with every :class:`IFNeuron` replaced by a :class:`PlainIF`."""
    ref = copy.deepcopy(snn)
    for name, m in list(ref.named_modules()):
        if isinstance(m, IFNeuron):
            parent, _, leaf = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, leaf, PlainIF(m))
    return ref


def _reset(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, PlainIF):
            m.reset()


@torch.no_grad()
def stepwise_simulate(net: nn.Module, x: Tensor, T: int) -> Tensor:
    """Outputs [T, N, K] of a :func:`plain_copy` network, one whole-network step at a time."""
    _reset(net)
    out = torch.stack([net(x) for _ in range(T)])
    _reset(net)
    return out


def _ann_activation(ann: nn.Module, name: str, x: Tensor) -> Tensor:
    """Post-activation output of ``ann``'s module ``name`` on ``x``: one full ANN forward."""
    got: list[Tensor] = []
    handle = ann.get_submodule(name).register_forward_hook(lambda m, i, o: got.append(o))
    try:
        ann(x)
    finally:
        handle.remove()
    return got[0]


@torch.no_grad()
def release_ftbc_pass(snn: nn.Module, ann: nn.Module, x: Tensor, T: int, alpha: float) -> None:
    """One FTBC heuristic pass over ``x`` the release's way; writes the biases into ``snn``'s neurons.

    Same result as ``layerwise_pass`` with ``ftbc_heuristic_update`` (tested),
    at O(layers^2 x T) cost: layer l's step t re-runs the ANN and every layer.
    """
    net = plain_copy(snn)
    ann_names = {n for n, _ in ann.named_modules()}
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, PlainIF) and n in ann_names]
    for name, neuron in layers:
        neuron.alpha = alpha
        _reset(net)
        for _ in range(T):
            target = _ann_activation(ann, name, x)  # recomputed for every (layer, step) pair
            neuron.goal = target.mean(dim=[0, *range(2, target.dim())])
            net(x)  # the whole network advances one step
        neuron.goal = None
    _reset(net)
    plain = dict(layers)
    for name, m in snn.named_modules():
        if isinstance(m, IFNeuron) and name in plain:
            m.bias = plain[name].bias.clone()
