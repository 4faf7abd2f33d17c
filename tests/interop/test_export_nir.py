"""The NIR export: the graph, read back from its file by a small discrete-time reader, computes the suite's SNN.

The reader below follows NIR's node definitions with dt = 1 (``I``: u += r * input;
``Threshold``: input > threshold; ``Scale``; ``Conv2d``; ``Affine``; ``AvgPool2d``;
``Flatten``; several edges into one input are summed) and gives every edge
that closes a cycle a one-step delay. It runs in float64 on the exported float32
values, against the suite's network in float64 with the same values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import get_method
from ftbc import models
from ftbc.snn.conversion import convert
from ftbc.snn.simulation import simulate
from methods.test_baselines import small

nir = pytest.importorskip("nir")
from ftbc.interop.export_nir import NotExpressible, to_nir  # noqa: E402

T = 4


def run_nir(graph, x: torch.Tensor, T: int) -> torch.Tensor:
    """Outputs [T, N, K] of ``graph`` on constant input ``x`` [N, C, H, W], discrete time, dt = 1."""
    order, delayed = _order(graph)
    state: dict[str, torch.Tensor] = {}
    prev: dict[str, torch.Tensor] = {}
    outs = []
    for _ in range(T):
        val: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                val[name] = x
                continue
            inputs = [(prev if (src, name) in delayed else val).get(src) for src, dst in graph.edges if dst == name]
            total = 0.0  # a delayed edge carries nothing before the first step
            for i in inputs:
                if i is not None:
                    total = total + i
            val[name] = _apply(node, name, total, state)
        outs.append(val["output"])
        prev = val
    return torch.stack(outs)


def _order(graph):
    """Topological order; edges that would close a cycle are returned as delayed."""
    order, seen, delayed, on_path = [], set(), set(), set()

    def visit(name):
        seen.add(name)
        on_path.add(name)
        for src, dst in graph.edges:
            if dst != name:
                continue
            if src in on_path:
                delayed.add((src, dst))
            elif src not in seen:
                visit(src)
        on_path.discard(name)
        order.append(name)

    visit("output")
    return order, delayed


def _apply(node, name, x, state):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, t(node.weight), t(node.bias), tuple(node.stride), tuple(node.padding),
                        tuple(node.dilation), node.groups)
    if isinstance(node, nir.Affine):
        return x @ t(node.weight).T + t(node.bias)
    if isinstance(node, nir.AvgPool2d):
        return F.avg_pool2d(x, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
    if isinstance(node, nir.Flatten):
        return x.flatten(node.start_dim + 1)
    if isinstance(node, nir.I):
        state[name] = state.get(name, 0) + t(node.r) * x
        return state[name]
    if isinstance(node, nir.Threshold):
        return (x > t(node.threshold)).double()
    if isinstance(node, nir.Scale):
        return x * t(node.scale)
    if isinstance(node, nir.Output):
        return x
    raise AssertionError(f"the reader has no rule for {type(node).__name__}")


@pytest.mark.parametrize("arch,name", [("vgg_small", "maxnorm"), ("vgg_small", "snnc_light"),
                                       ("resnet20_qcfs", "rts"), ("resnet20_qcfs", "maxnorm")])
def test_the_nir_graph_computes_the_suites_snn(arch, name, tmp_path):
    method = small(get_method(name), threshold_batches=1)
    torch.manual_seed(0)
    x = torch.randn(40, 3, 32, 32)
    ann = models.create_model(arch, num_classes=10, act_layer=method.activation).eval()
    snn = convert(ann, method, data=x[:32], T=T).snn
    graph = to_nir(snn, (3, 32, 32))
    nir.write(tmp_path / "snn.nir", graph)
    back = nir.read(tmp_path / "snn.nir")
    assert set(back.nodes) == set(graph.nodes) and len(back.edges) == len(graph.edges)
    ours = simulate(snn.double(), x[32:].double(), T, mode="s")
    theirs = run_nir(back, x[32:].double(), T)
    assert ours.abs().max() > 0
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,words", [("ftbc_relu", "a bias that changes with the time step"),
                                        ("qcfs", "initial membrane potential"),
                                        ("snnc_light", "residual sum")])
def test_what_nir_cannot_express_is_named(name, words):
    method = small(get_method(name), threshold_batches=1)
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    ann = models.create_model("resnet20_qcfs", num_classes=10, act_layer=method.activation).eval()
    snn = convert(ann, method, data=x, T=T).snn
    with pytest.raises(NotExpressible, match=words):
        to_nir(snn, (3, 32, 32))
