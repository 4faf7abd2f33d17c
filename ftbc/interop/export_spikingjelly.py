"""The converted SNN as a SpikingJelly 2.0 network: for running it elsewhere, and for the speed comparison.

Every :class:`~ftbc.snn.neuron.IFNeuron` becomes a SpikingJelly neuron whose output
is theta * spikes (what the next layer of a converted network receives);
weights and every other layer are the suite's own. Two kinds of node:

- ``'plain'``: SpikingJelly's own ``IFNode`` (``v_reset=None``: soft reset,
  ``v_threshold`` = theta, reset value of ``v`` = v0). It takes one float
  threshold, so only neurons with a scalar threshold, a scalar v0, no offset
  and no FTBC bias translate (max-norm or QCFS conversion); anything else
  raises rather than run a different network. The benchmark uses this one.
- ``'exact'``: :class:`ConvertedIFNode`, a small subclass of SpikingJelly's
  ``SimpleBaseNode`` (its documented way to change a neuron's equations) with
  what ``IFNode`` has no field for: per-channel thresholds, a per-channel or
  per-neuron initial potential, the constant per-step current (shift, bias
  correction) and the FTBC bias of every step. Every method translates.

``'auto'`` (the default) takes ``'plain'`` where it can express the neuron.
Both give the suite's outputs: the same floating-point operations in the same
order (tested bit-equal on every registered method).

Step modes as SpikingJelly defines them: ``'s'`` calls the network once per
step on [N, ...]; ``'m'`` runs the stateless layers once over [T*N, ...] and
each neuron on [T, N, ...] (what its ``SeqToANNContainer`` does).
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import Tensor, nn

from ftbc.snn.neuron import IFNeuron


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


def expressible_by_ifnode(n: IFNeuron) -> str | None:
    """Why SpikingJelly's ``IFNode`` cannot run ``n`` exactly, or None when it can."""
    if n.bias.numel() or n.offset.abs().max().item() != 0:
        return "SpikingJelly's IFNode has no per-step offset or FTBC bias"
    for name in ("threshold", "v0"):
        if getattr(n, name).numel() != 1:
            return f"SpikingJelly's IFNode needs a scalar {name}; this neuron has shape {tuple(getattr(n, name).shape)}"
    return None


class SJNeuron(nn.Module):
    """SpikingJelly ``IFNode`` standing in for one converted neuron; outputs theta * spikes."""

    def __init__(self, n: IFNeuron, step_mode: str, T: int):
        super().__init__()
        from spikingjelly.activation_based import neuron

        why = expressible_by_ifnode(n)
        if why:
            raise ValueError(f"{why}; use node='exact' (ConvertedIFNode)")
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


def _channels(p: Tensor, ndim: int) -> Tensor:
    """A [C] parameter broadcast over [N, C, *spatial]; scalars and per-neuron tensors as they are."""
    return p.view(-1, *([1] * (ndim - 2))) if p.dim() == 1 and ndim > 2 else p


def __getattr__(name: str):
    # ``ConvertedIFNode`` is defined on first use, so that importing this module needs no SpikingJelly;
    # pickle finds it here too.
    if name == "ConvertedIFNode":
        return converted_if_node_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def converted_if_node_class() -> type:
    """The :class:`ConvertedIFNode` class (a SpikingJelly ``SimpleBaseNode``)."""
    if "ConvertedIFNode" in globals():
        return globals()["ConvertedIFNode"]
    from spikingjelly.activation_based import neuron, surrogate

    class ConvertedIFNode(neuron.SimpleBaseNode):
        """Integrate-and-fire with soft reset as a converted network needs it; outputs theta * spikes.

        Per step t (from 0 after ``reset()``)::

            v <- v + (x + offset + bias[t])        # bias[t] only for t < bias.shape[0]
            s = heaviside(v - theta)               # fires at v >= theta
            v <- v - theta * s

        with v = v0 before the first step. ``threshold``, ``v0``, ``offset`` and
        ``bias`` are buffers, so ``state_dict()`` carries them.
        """

        def __init__(self, threshold: Tensor, v0: Tensor, offset: Tensor, bias: Tensor, step_mode: str = "s"):
            super().__init__(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.Sigmoid(),
                             step_mode=step_mode)
            self.register_buffer("threshold", threshold.detach().clone())
            self.register_buffer("v0", v0.detach().clone())
            self.register_buffer("offset", offset.detach().clone())
            self.register_buffer("bias", bias.detach().clone())  # [T_b, C]
            self.register_memory("t", 0)

        @classmethod
        def from_neuron(cls, n: IFNeuron, step_mode: str = "s") -> "ConvertedIFNode":
            return cls(n.threshold, n.v0, n.offset, n.bias, step_mode=step_mode)

        def single_step_forward(self, x: Tensor) -> Tensor:
            if not isinstance(self.v, Tensor) or self.v.shape != x.shape:  # first step after reset
                self.v = _channels(self.v0, x.dim()).to(x.dtype).expand_as(x).clone()
            drive = x + _channels(self.offset, x.dim()) if self.offset.dim() or self.offset.item() != 0 else x
            if self.t < self.bias.shape[0]:
                drive = drive + _channels(self.bias[self.t], x.dim())
            theta = _channels(self.threshold, x.dim()).to(x.dtype)
            self.v = self.v + drive
            out = self.surrogate_function(self.v - theta) * theta
            self.v = self.v - out
            self.t = self.t + 1
            return out

        def extra_repr(self) -> str:
            return (f"threshold={tuple(self.threshold.shape) or 'scalar'}, ftbc_steps={self.bias.shape[0]}, "
                    f"step_mode={self.step_mode!r}")

    ConvertedIFNode.__module__, ConvertedIFNode.__qualname__ = __name__, "ConvertedIFNode"
    globals()["ConvertedIFNode"] = ConvertedIFNode
    return ConvertedIFNode


class ExactNeuron(nn.Module):
    """:class:`ConvertedIFNode` inside the suite's graph, which folds T into the batch in ``'m'`` mode."""

    def __init__(self, n: IFNeuron, step_mode: str, T: int):
        super().__init__()
        self.T, self.step_mode = T, step_mode
        self.node = converted_if_node_class().from_neuron(n, step_mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "m":
            return self.node(x.view(self.T, x.shape[0] // self.T, *x.shape[1:])).view_as(x)
        return self.node(x)


def to_spikingjelly(snn: nn.Module, step_mode: str = "s", T: int = 1, node: str = "auto") -> nn.Module:
    """A copy of ``snn`` whose neurons are SpikingJelly nodes in ``step_mode`` ('s' or 'm').

    ``node``: ``'plain'`` (SpikingJelly's ``IFNode``; raises where it cannot express a neuron),
    ``'exact'`` (:class:`ConvertedIFNode` everywhere) or ``'auto'`` (plain where possible).
    ``T`` is needed in ``'m'`` mode only.
    """
    if step_mode not in ("s", "m"):
        raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    if node not in ("auto", "plain", "exact"):
        raise ValueError(f"node must be 'auto', 'plain' or 'exact', got {node!r}")
    net = copy.deepcopy(snn)
    for name, m in list(net.named_modules()):
        if isinstance(m, IFNeuron):
            plain = node == "plain" or (node == "auto" and expressible_by_ifnode(m) is None)
            if plain:
                new: nn.Module = SJNeuron(m, step_mode, T)
            elif step_mode == "s":  # the SpikingJelly node itself sits in the graph
                new = converted_if_node_class().from_neuron(m)
            else:
                new = ExactNeuron(m, step_mode, T)
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return net


@torch.no_grad()
def sj_simulate(net: nn.Module, x: Tensor, T: int) -> Tensor:
    """Outputs [T, N, K] of a :func:`to_spikingjelly` network on images ``x`` [N, ...]."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    try:
        step_mode = next((m.step_mode for m in net.modules() if isinstance(m, (SJNeuron, ExactNeuron))), "s")
        if step_mode == "m":
            n = x.shape[0]
            out = net(x.unsqueeze(0).expand(T, *x.shape).reshape(T * n, *x.shape[1:]))
            return out.view(T, n, *out.shape[1:])
        return torch.stack([net(x) for _ in range(T)])
    finally:
        functional.reset_net(net)
