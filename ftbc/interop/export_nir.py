"""The calibrated SNN as a NIR graph (Neuromorphic Intermediate Representation, PyPI ``nir``).

NIR's ``IF`` node resets the membrane *to* ``v_reset`` after a spike; a converted
network needs reset *by subtraction* (the charge above threshold carries over,
which is what makes the firing rate approximate the ANN's activation). So each
neuron is written as the NIR primitives of its equations instead::

    <name>          I          (r = 1)            u(t) = u(t-1) + x(t) - theta * s(t-1)
    <name>.fire     Threshold  (theta-)           s(t) = [u(t) > theta-]
    <name>.out      Scale      (theta)            the layer output theta * s(t)
    <name>.reset    Scale      (-theta)           fed back into <name>: the soft reset

``u`` is the membrane before the reset of its step, so ``u(t) = m(t)`` of
:mod:`ftbc.snn.neuron`. The feedback edge ``<name>.reset -> <name>`` is the graph's
only cycle per neuron; a discrete-time reader (dt = 1) gives it the one-step
delay every recurrent edge needs. ``theta-`` is the float32 number just below
theta: NIR fires strictly above its threshold, the suite at or above it, and no
float32 lies between the two, so the network is exact, not approximately so.

Parameters are per channel where the suite's are ([C, 1, 1] over a conv
layer's [C, H, W] output). A neuron's constant per-step current (the theta/2T
shift, SNN Calibration's bias correction) is added to the bias of the layer
feeding it. What NIR cannot express, and the export refuses naming it:
a bias that changes with the time step (FTBC), a non-zero initial membrane
potential (NIR nodes have no initial state; QCFS, OPI and SNN Calibration's
potential stage start at theta/2 or a calibrated v0), and a constant current
into a neuron fed by a residual sum or by more than one layer.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ftbc.errors import UserError
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.simulation import reset_net

SKIPPED = (nn.Dropout, nn.Identity)
_ADD = (operator.add, operator.iadd, torch.add)
_FLATTEN_METHODS = ("flatten", "view", "reshape")


class NotExpressible(UserError):
    """The network has something NIR has no node or field for."""


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().astype(np.float32)


def _per_channel(p: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A neuron parameter (scalar or [C]) as an array of the layer's shape [C, H, W] / [C]."""
    p = p.detach().float()
    if p.dim() == 1 and len(shape) > 1:
        p = p.view(-1, *([1] * (len(shape) - 1)))
    return _np(p.expand(shape).contiguous())


def check_expressible(snn: nn.Module) -> None:
    """Raise :class:`NotExpressible` naming each neuron property NIR cannot hold."""
    problems = []
    for name, n in snn.named_modules():
        if not isinstance(n, IFNeuron):
            continue
        if n.bias.numel() and n.bias.abs().max().item() != 0:
            problems.append(f"{name}: a bias that changes with the time step (FTBC, {n.bias.shape[0]} steps)")
        if n.v0.abs().max().item() != 0:
            problems.append(f"{name}: a non-zero initial membrane potential (v0)")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NotExpressible("NIR cannot express " + "; ".join(problems[:3]) + more)


@torch.no_grad()
def to_nir(snn: fx.GraphModule, input_shape: tuple[int, ...]) -> Any:
    """A ``nir.NIRGraph`` of ``snn`` (a converted network in the suite's fx form) for inputs [C, H, W]."""
    import nir

    check_expressible(snn)
    graph = _GraphBuilder(nir, dict(snn.named_modules()), _output_shapes(snn, input_shape), input_shape)
    for node in snn.graph.nodes:
        graph.add(node)
    return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata={
        "source": "ftbc converted SNN", "neuron": "integrate-and-fire, reset by subtraction (I, Threshold, "
        "Scale, recurrent Scale(-theta)); the recurrent edge carries a one-step delay"})


def _output_shapes(snn: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, tuple[int, ...]]:
    """Each fx node's output shape without the batch dimension, from one all-zero step; neuron state reset around it."""
    reset_net(snn)
    ShapeProp(snn).propagate(torch.zeros(1, *input_shape))
    reset_net(snn)
    return {n: tuple(n.meta["tensor_meta"].shape[1:]) for n in snn.graph.nodes if "tensor_meta" in n.meta}


class _GraphBuilder:
    """The NIR nodes and edges of an fx graph, built one fx node at a time in graph order.

    An fx node's value can be the sum of several NIR nodes' outputs (a residual add makes no NIR
    node: its inputs both feed whatever consumes it), hence ``sources``.
    """

    def __init__(self, nir: Any, modules: dict[str, nn.Module], shape: dict[fx.Node, tuple[int, ...]],
                 input_shape: tuple[int, ...]) -> None:
        self.nir, self.modules, self.shape, self.input_shape = nir, modules, shape, input_shape
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[fx.Node, list[str]] = {}  # the NIR nodes whose outputs sum to this fx node's value
        self.biases: dict[str, np.ndarray] = {}  # NIR node -> its bias array, for a constant current to fold into

    def connect(self, node: fx.Node, target: str) -> None:
        """Edges into ``target`` from every NIR node that makes up ``node``'s input."""
        self.edges.extend((src, target) for src in self.sources[node.args[0]])

    def add(self, node: fx.Node) -> None:
        """The NIR side of one fx node, in graph order (its inputs are already there)."""
        nir, key = self.nir, node.name
        if node.op == "placeholder":
            self.nodes["input"] = nir.Input(input_type={"input": np.array(self.input_shape)})
            self.sources[node] = ["input"]
        elif node.op == "output":
            self.nodes["output"] = nir.Output(output_type={"output": np.array(self.shape[node.args[0]])})
            self.connect(node, "output")
        elif node.op == "call_module":
            self.module(node, self.modules[node.target])
        elif node.op == "call_function" and node.target in _ADD:
            self.sources[node] = [s for arg in node.args[:2] for s in self.sources[arg]]
        elif (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target in _FLATTEN_METHODS):
            self.nodes[key] = nir.Flatten(input_type={"input": np.array(self.shape[node.args[0]])},
                                          start_dim=0, end_dim=-1)
            self.connect(node, key)
            self.sources[node] = [key]
        else:
            raise NotExpressible(f"NIR export has no node for {node.op} {node.target}")

    def module(self, node: fx.Node, m: nn.Module) -> None:
        """A module call: passed through (dropout, identity), a neuron's four nodes, or one layer node."""
        key = node.name
        if isinstance(m, SKIPPED):
            self.sources[node] = self.sources[node.args[0]]
            return
        if isinstance(m, IFNeuron):
            _neuron(self.nir, self.nodes, self.edges, key, m, self.shape[node])
            if m.offset.abs().max().item() != 0:
                _fold_offset(self.sources[node.args[0]], self.biases, m, self.shape[node], node.target)
            self.connect(node, key)
            self.sources[node] = [f"{key}.out"]
            return
        self.nodes[key] = self.layer(node, m)
        self.connect(node, key)
        self.sources[node] = [key]

    def layer(self, node: fx.Node, m: nn.Module) -> Any:
        """The NIR node of a conv, linear, average pooling or flatten module; a bias only its one consumer
        sees is kept in ``biases`` for a neuron's constant current to fold into."""
        nir, shape_in = self.nir, self.shape[node.args[0]]
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return _avg_pool(nir, m, shape_in, self.shape[node])
        if isinstance(m, nn.Flatten):
            return nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=m.start_dim - 1, end_dim=m.end_dim)
        if isinstance(m, nn.Conv2d):
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
            out = nir.Conv2d(input_shape=shape_in[1:], weight=_np(m.weight), stride=m.stride, padding=m.padding,
                             dilation=m.dilation, groups=m.groups, bias=bias)
        elif isinstance(m, nn.Linear):
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
            out = nir.Affine(weight=_np(m.weight), bias=bias)
        else:
            raise NotExpressible(f"NIR export has no node for {type(m).__name__} ({node.target})")
        if len(node.users) == 1:
            self.biases[node.name] = bias
        return out


def _neuron(nir: Any, nodes: dict, edges: list, key: str, n: IFNeuron, shape: tuple[int, ...]) -> None:
    theta = _per_channel(n.threshold, shape)
    below = np.nextafter(theta, np.float32(-np.inf)).astype(np.float32)  # > below  <=>  >= theta in float32
    nodes[key] = nir.I(r=np.ones(shape, np.float32))
    nodes[f"{key}.fire"] = nir.Threshold(threshold=below)
    nodes[f"{key}.out"] = nir.Scale(scale=theta)
    nodes[f"{key}.reset"] = nir.Scale(scale=-theta)
    edges += [(key, f"{key}.fire"), (f"{key}.fire", f"{key}.out"), (f"{key}.fire", f"{key}.reset"),
              (f"{key}.reset", key)]


def _fold_offset(srcs: list[str], biases: dict[str, np.ndarray], n: IFNeuron, shape: tuple[int, ...],
                 name: str) -> None:
    """Add the neuron's constant per-step current to the bias of the one layer feeding it."""
    if len(srcs) != 1 or srcs[0] not in biases:
        raise NotExpressible(f"NIR cannot express {name}: a constant per-step current (shift or bias correction) "
                             f"into a neuron fed by a residual sum or by a layer that feeds others too")
    offset = n.offset.detach().float()
    bias = biases[srcs[0]]
    bias += _np(offset.expand(bias.shape) if offset.dim() == 0 else offset)


def _avg_pool(nir: Any, m: nn.Module, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> Any:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        (h, w), (oh, ow) = shape_in[1:], shape_out[1:]
        if h % oh or w % ow:
            raise NotExpressible(f"NIR export: adaptive pooling {h}x{w} -> {oh}x{ow} is not a fixed window")
        k = s = (h // oh, w // ow)
        p = (0, 0)
    else:
        k, s, p = (_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding))
        if m.ceil_mode or (any(p) and not m.count_include_pad):
            raise NotExpressible("NIR export: average pooling with ceil_mode or count_include_pad=False")
    return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
