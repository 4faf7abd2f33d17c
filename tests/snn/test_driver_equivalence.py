"""The calibration drivers compute exactly what a plain walk over the traced graph computes.

The drivers reach into a running forward (a layer's T steps before it fires, or FTBC's
step t in step-major order). The references here do the same with a
``torch.fx.Interpreter`` that calls the per-layer updates itself, so they share no
interception mechanism with the drivers; every comparison is ``torch.equal``: the
interception must not change a single floating-point operation. End to end, each
calibration method is run once with the drivers and once with the references swapped in.
"""

import pytest
import torch
from torch import fx

import baselines.snnc as snnc
import ftbc.snn.calibration as calibration
from _nets import tiny_resnet, tiny_vgg
from baselines import get_method
from ftbc.snn.conversion import convert
from ftbc.snn.ftbc_solvers import (ann_channel_means, ensure_bias, ftbc_heuristic_step, ftbc_heuristic_update,
                                   ftbc_quantile_update, stepwise_ftbc_pass)
from ftbc.snn.method import Method
from ftbc.snn.neuron import IFNeuron, exact
from ftbc.snn.simulation import accuracy_per_step, reset_net, set_step_mode, simulate
from ftbc.snn.stages import STAGES

T = 5


class _AtNeurons(fx.Interpreter):
    """Runs the graph, handing each IF neuron named in ``names`` to ``fire(name, neuron, x)``."""

    def __init__(self, gm: fx.GraphModule, names, fire):
        super().__init__(gm)
        self.names, self.fire = names, fire

    def call_module(self, target, args, kwargs):
        if target in self.names:
            return self.fire(target, self.fetch_attr(target), args[0])
        return super().call_module(target, args, kwargs)


@torch.no_grad()
def reference_layerwise_pass(snn, ann, x, T, update, *, returns_outputs=False):
    """:func:`ftbc.snn.calibration.layerwise_pass`, written as a graph walk."""
    targets = calibration.ann_targets(ann, x)

    def fire(name, n, current):
        xs = exact(current).view(T, current.shape[0] // T, *current.shape[1:])
        out = update(name, n, xs, targets[name])
        if out is None or not returns_outputs:
            out = n.run_steps(xs)
        return out.view_as(current)

    set_step_mode(snn, "m", T)
    reset_net(snn)
    try:
        _AtNeurons(snn, set(targets), fire).run(x.unsqueeze(0).expand(T, *x.shape).reshape(T * x.shape[0], *x.shape[1:]))
    finally:
        set_step_mode(snn, "s")
        reset_net(snn)


@torch.no_grad()
def reference_stepwise_pass(snn, ann, x, T, alpha):
    """:func:`ftbc.snn.ftbc_solvers.stepwise_ftbc_pass`, written as a graph walk."""
    goals = ann_channel_means(ann, x)

    def fire(name, n, current):
        current = exact(current)
        if n.v is None:
            ensure_bias(n, T, current.shape[1])
            n.v = n.initial_membrane(current)
        out = ftbc_heuristic_step(n, n.v, current, n.t, goals[name], alpha)
        n.t += 1
        return out

    set_step_mode(snn, "s")
    reset_net(snn)
    try:
        for _ in range(T):
            _AtNeurons(snn, set(goals), fire).run(x)
    finally:
        reset_net(snn)


def uncalibrated(make):
    torch.manual_seed(0)
    x = torch.randn(24, 3, 16, 16)
    method = Method(name="plain", activation="relu", threshold="max", channelwise=True, v0=0.25, shift=True,
                    threshold_batches=1, threshold_batch_size=24)
    res = convert(make(), method, data=x, T=T)
    return res.snn, res.ann, x


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def twins(make):
    snn, ann, x = uncalibrated(make)
    ref, _, _ = uncalibrated(make)
    return snn, ref, ann, x


NETS = [tiny_vgg, tiny_resnet]


@pytest.mark.parametrize("make", NETS)
@pytest.mark.parametrize("returns_outputs", [True, False])
def test_layerwise_heuristic_passes_match_the_graph_walk(make, returns_outputs):
    snn, ref, ann, x = twins(make)
    for alpha in (0.5, 0.3):  # biases accumulate over passes: the second starts from the first's
        for net, run in ((snn, calibration.layerwise_pass), (ref, reference_layerwise_pass)):
            run(net, ann, x, T, lambda name, n, xs, a: ftbc_heuristic_update(n, xs, a, alpha),
                returns_outputs=returns_outputs)
    assert_same_state(snn, ref)
    assert any(n.bias.abs().sum() > 0 for n in snn.modules() if isinstance(n, IFNeuron))
    assert torch.equal(simulate(snn, x, T, mode="s"), simulate(ref, x, T, mode="s"))


@pytest.mark.parametrize("make", NETS)
def test_quantile_pass_matches_the_graph_walk(make):
    snn, ref, ann, x = twins(make)
    for net, run in ((snn, calibration.layerwise_pass), (ref, reference_layerwise_pass)):
        run(net, ann, x, T, lambda name, n, xs, a: ftbc_quantile_update(n, xs, a))
    assert_same_state(snn, ref)


@pytest.mark.parametrize("make", NETS)
def test_rate_pass_in_layer_order_matches_the_graph_walk(make):
    snn, ref, ann, x = twins(make)

    def update(name, n, r, a):  # SNNC's bias calibration on the layer's rate
        n.offset = n.offset - (r - a).mean(dim=(0, 2, 3) if a.dim() == 4 else 0)

    assert calibration.rate_pass(snn, ann, x, T, update, order="layer") == "layer"
    reference_layerwise_pass(ref, ann, x, T, lambda name, n, xs, a: update(name, n, n.run_steps(xs).mean(0), a))
    assert_same_state(snn, ref)
    assert all(n.offset.dim() == 1 for n in snn.modules() if isinstance(n, IFNeuron))


@pytest.mark.parametrize("make", NETS)
def test_stepwise_ftbc_pass_matches_the_graph_walk(make):
    snn, ref, ann, x = twins(make)
    for alpha in (0.5, 0.3):
        stepwise_ftbc_pass(snn, ann, x, T, alpha)
        reference_stepwise_pass(ref, ann, x, T, alpha)
    assert_same_state(snn, ref)
    assert any(n.bias.abs().sum() > 0 for n in snn.modules() if isinstance(n, IFNeuron))


TINY = dict(images=24, iterations=2, batches=2, batch_size=12, samples=48, chunk=24)


def tiny_budget(name, dataset=None, **overrides):
    method = get_method(name, dataset)
    changes = {"threshold_batches": 2, "threshold_batch_size": 24, **overrides}
    for s in method.stages:
        changes.update({f"{s.name}.{k}": v for k, v in TINY.items() if k in STAGES[s.name].defaults})
    return method.with_overrides(changes)


METHODS = [
    ("snnc_light", None, {"bias.order": "layer"}),
    ("snnc_light", None, {"bias.order": "step"}),
    ("snnc_advanced", None, {"potential.order": "layer"}),
    ("snnc_advanced", "imagenet", {"weight.order": "layer", "weight.iterations": 3}),
    ("ftbc_relu", None, {"ftbc.order": "layer"}),
    ("ftbc_relu", None, {"ftbc.order": "step"}),
    ("ftbc_relu_quantile", None, {}),
]


@pytest.mark.parametrize("make", NETS)
@pytest.mark.parametrize("name, dataset, overrides", METHODS)
def test_calibrated_methods_match_the_graph_walk_end_to_end(make, name, dataset, overrides, monkeypatch):
    """Thresholds, offsets, potentials, weights and FTBC biases, outputs and accuracy: all bit-equal."""
    torch.manual_seed(0)
    x = torch.randn(48, 3, 16, 16)
    method = tiny_budget(name, dataset, **overrides)
    ours = convert(make(), method, data=x, T=T)
    monkeypatch.setattr(calibration, "layerwise_pass", reference_layerwise_pass)
    monkeypatch.setattr(snnc, "layerwise_pass", reference_layerwise_pass)
    monkeypatch.setattr(calibration, "stepwise_ftbc_pass", reference_stepwise_pass)
    theirs = convert(make(), method, data=x, T=T)
    assert_same_state(ours.snn, theirs.snn)
    y = ours.ann(x).argmax(1)
    out = simulate(ours.snn, x, T, mode="s")
    assert torch.equal(out, simulate(theirs.snn, x, T, mode="s"))
    assert torch.equal(accuracy_per_step(ours.snn, [(x, y)], T), accuracy_per_step(theirs.snn, [(x, y)], T))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("make", NETS)
def test_drivers_put_the_neurons_back_even_when_an_update_raises(make, monkeypatch):
    import ftbc.snn.ftbc_solvers as solvers

    snn, ann, x = uncalibrated(make)
    before = dict(snn.named_modules())
    ref = simulate(snn, x, T, mode="s")
    calls = []

    def fail_at_second(*args, **kwargs):  # the layer-major pass's second layer, the step pass's first
        calls.append(1)
        if len(calls) >= 2:
            raise _Stop

    with pytest.raises(_Stop):
        calibration.layerwise_pass(snn, ann, x, T, fail_at_second)
    monkeypatch.setattr(solvers, "ftbc_heuristic_step", fail_at_second)
    with pytest.raises(_Stop):
        stepwise_ftbc_pass(snn, ann, x, T, 0.5)
    assert len(calls) == 3
    after = dict(snn.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(n.step_mode == "s" and n.v is None for n in snn.modules() if isinstance(n, IFNeuron))
    assert torch.equal(simulate(snn, x, T, mode="s"), ref)  # the failed passes changed no parameter


def test_the_neuron_holds_no_driver_or_backend_state():
    n = IFNeuron(threshold=1.0)
    assert set(vars(n)) - set(vars(torch.nn.Module())) == {"step_mode", "n_steps", "v", "t"}
