"""The same converted SNN run by SpikingJelly 2.0, for the speed comparison (a test dependency only).

Every :class:`~ftbc.neuron.IFNeuron` becomes SpikingJelly's ``IFNode``
(``v_reset=None``: soft reset, ``v_threshold`` = theta, reset value of ``v``
= v0) followed by the multiplication by theta that turns its {0, 1} spikes
into the layer output; weights and every other layer are the suite's own.
SpikingJelly's ``IFNode`` takes one float threshold, so only networks with
scalar thresholds, scalar v0, no offset and no FTBC bias translate (max-norm
or QCFS conversion); anything else raises rather than run a different network.

Step modes as SpikingJelly defines them: ``'s'`` calls the network once per
step on [N, ...]; ``'m'`` runs the stateless layers once over [T*N, ...] and
each ``IFNode`` on [T, N, ...] (what its ``SeqToANNContainer`` does).
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import Tensor, nn

from ftbc.neuron import IFNeuron


def available() -> bool:
    """True when ``spikingjelly`` is importable."""
    return importlib.util.find_spec("spikingjelly") is not None


def version() -> str | None:
    if not available():
        return None
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version("spikingjelly")
    except PackageNotFoundError:
        return "unknown"


def _scalar(name: str, value: Tensor) -> float:
    if value.numel() != 1:
        raise ValueError(f"SpikingJelly's IFNode needs a scalar {name}; this neuron has shape {tuple(value.shape)}")
    return float(value.reshape(()))


class SJNeuron(nn.Module):
    """SpikingJelly ``IFNode`` standing in for one converted neuron; outputs theta * spikes."""

    def __init__(self, n: IFNeuron, step_mode: str, T: int):
        super().__init__()
        from spikingjelly.activation_based import neuron

        if n.bias.numel() or n.offset.abs().max().item() != 0:
            raise ValueError("SpikingJelly's IFNode has no per-step offset or FTBC bias; convert without them")
        self.theta = _scalar("threshold", n.threshold)
        self.T, self.step_mode = T, step_mode
        self.node = neuron.IFNode(v_threshold=self.theta, v_reset=None, step_mode=step_mode)
        self.node.set_reset_value("v", _scalar("v0", n.v0))
        self.node.reset()

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "m":
            xs = x.view(self.T, x.shape[0] // self.T, *x.shape[1:])
            return (self.node(xs) * self.theta).view_as(x)
        return self.node(x) * self.theta


def to_spikingjelly(snn: nn.Module, step_mode: str, T: int) -> nn.Module:
    """A copy of ``snn`` whose neurons are SpikingJelly ``IFNode``s in ``step_mode`` ('s' or 'm')."""
    if step_mode not in ("s", "m"):
        raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    net = copy.deepcopy(snn)
    for name, m in list(net.named_modules()):
        if isinstance(m, IFNeuron):
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, SJNeuron(m, step_mode, T))
    return net


@torch.no_grad()
def sj_simulate(net: nn.Module, x: Tensor, T: int) -> Tensor:
    """Outputs [T, N, K] of a :func:`to_spikingjelly` network on images ``x`` [N, ...]."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    try:
        step_mode = next(m.step_mode for m in net.modules() if isinstance(m, SJNeuron))
        if step_mode == "m":
            n = x.shape[0]
            out = net(x.unsqueeze(0).expand(T, *x.shape).reshape(T * n, *x.shape[1:]))
            return out.view(T, n, *out.shape[1:])
        return torch.stack([net(x) for _ in range(T)])
    finally:
        functional.reset_net(net)
