"""Thresholds agree with SNN Calibration's release (docs/methods.md section 2).

The reference below is a step-by-step transcription of the release's threshold
rules, written from the specification (not from its code):

- "mse": per calibration batch, for theta in {max * (1 - 0.01 k), k = 0..94}
  (k ascending, the first strict minimum kept), the squared error
  || a - theta * clip(floor(a T / theta) / T, 0, 1) ||^2; channel-wise only for
  4-D (convolution) activations, layer-wise for 2-D (linear) ones even when
  channel-wise thresholds are asked for;
- "max": the batch maximum of the layer (the release has no channel-wise max);
- batches combined by an EMA with momentum 0.9 (the first batch taken as is).

It runs on a tiny network with fixed weights and data, two convolution and one
linear spiking layer and no BatchNorm (so folding changes nothing and both sides
see bit-identical activations), and is compared with
``ftbc.snn.conversion.observe_thresholds``.

The comparison is bit-equal (``torch.equal``). Why it can be: every threshold is
a grid point max * (1 - 0.01 k) formed by the same float32 product on both
sides, and the EMA is the same float32 expression. The two sides do evaluate the
search error differently (the suite sums over positive entries only and works in
units of theta / T; the reference sums over every entry), so a near-tie within
float rounding could in principle pick a neighbouring grid point; that would
move a threshold by at least 0.1 % (one grid step times 1 - momentum), so
a 1e-6 tolerance would not hide it either, and a failure here means a different
choice, never rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines import get_method
from ftbc.snn.graph import fold_bn
from ftbc.snn.conversion import observe_thresholds, swap_activations
from ftbc.snn.method import Method
from ftbc.snn.thresholds import batch_threshold

MOMENTUM = 0.9
GRID = 95  # k = 0..94


# -- the reference, transcribed from the specification ------------------------------------

def reference_quantise(a: torch.Tensor, theta: torch.Tensor, T: int) -> torch.Tensor:
    return theta * torch.clamp(torch.floor(a * T / theta) / T, 0, 1)


def reference_search(a: torch.Tensor, T: int) -> torch.Tensor:
    """The grid search over one set of activations (a whole layer, or one channel)."""
    top = a.max()
    best_theta, best_err = top, None
    for k in range(GRID):
        theta = top * (1 - 0.01 * k)
        err = (a - reference_quantise(a, theta, T)).pow(2).sum()
        if best_err is None or err < best_err:
            best_theta, best_err = theta, err
    return best_theta


def reference_mse_threshold(a: torch.Tensor, T: int, channel_wise: bool) -> torch.Tensor:
    if channel_wise and a.dim() == 4:
        return torch.stack([reference_search(a[:, c], T) for c in range(a.shape[1])])
    return reference_search(a, T)


def reference_max_threshold(a: torch.Tensor) -> torch.Tensor:
    return a.max()


def reference_thresholds(net: nn.Module, batches, rule) -> dict[str, torch.Tensor]:
    """Per ReLU (by module name): the rule per batch, combined by the EMA."""
    ema: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach()))
             for name, m in net.named_modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            for x in batches:
                seen.clear()
                net(x)
                for name, a in seen.items():
                    cur = rule(a)
                    ema[name] = cur if name not in ema else MOMENTUM * ema[name] + (1 - MOMENTUM) * cur
    finally:
        for h in hooks:
            h.remove()
    return ema


# -- the fixture: a tiny conv + linear network, fixed weights and data -------------------------

def tiny_net() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10), nn.ReLU(),  # a linear spiking layer: 2-D activations
        nn.Linear(10, 5),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(0.0, 0.2)  # most neurons active, so every grid search has work to do
    return net.eval()


def fixed_batches(n: int = 3, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(size, 3, 16, 16, generator=g) for _ in range(n)]


def suite_thresholds(net: nn.Module, method: Method, batches, T: int) -> dict[str, torch.Tensor]:
    return observe_thresholds(fold_bn(net), method, batches, T)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, (name, got[name].shape, want[name].shape)
        assert torch.equal(got[name], want[name].float()), (name, got[name], want[name])


# -- MSE ----------------------------------------------------------------------------------

@pytest.mark.parametrize("channel_wise", [False, True], ids=["layerwise", "channelwise"])
@pytest.mark.parametrize("T", [4, 16])
def test_mse_thresholds_match_the_release_transcription(T, channel_wise):
    net, batches = tiny_net(), fixed_batches()
    method = get_method("snnc_light").with_overrides({"channelwise": channel_wise})
    assert method.threshold == "mse" and method.threshold_reduce == "ema" and method.threshold_positions is None
    want = reference_thresholds(net, batches, lambda a: reference_mse_threshold(a, T, channel_wise))
    got = suite_thresholds(net, method, batches, T)
    assert_same(got, want)
    # the shapes the release gives: [C] for the convolutions when channel-wise, one scalar for the linear layer
    assert [tuple(got[n].shape) for n in ("1", "4", "8")] == ([(4,), (6,), ()] if channel_wise else [(), (), ()])


def test_ftbc_relu_thresholds_are_channelwise_for_convolutions_only():
    """FTBC's ReLU row asks for channel-wise thresholds; its linear layer keeps one (docs/methods.md section 2)."""
    net, batches, T = tiny_net(), fixed_batches(), 8
    method = get_method("ftbc_relu")
    assert method.channelwise
    want = reference_thresholds(net, batches, lambda a: reference_mse_threshold(a, T, True))
    assert_same(suite_thresholds(net, method, batches, T), want)
    # and the converted network runs with that mix of per-channel and scalar thresholds
    gm = fold_bn(net)
    snn = swap_activations(gm, observe_thresholds(gm, method, batches, T), method, T)
    assert snn.get_submodule("8").threshold.dim() == 0 and snn.get_submodule("4").threshold.shape == (6,)


# -- max ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["maxnorm", "snnc_none"])
def test_max_thresholds_match_the_release_max_path(name):
    net, batches = tiny_net(), fixed_batches()
    method = get_method(name)
    assert method.threshold == "max" and method.threshold_reduce == "ema" and not method.channelwise
    want = reference_thresholds(net, batches, reference_max_threshold)
    for T in (2, 32):  # the max rule does not depend on T
        assert_same(suite_thresholds(net, method, batches, T), want)


# -- the channel-wise rule for every threshold rule ---------------------------------------------

@pytest.mark.parametrize("rule", ["max", "percentile", "mse"])
def test_channelwise_rules_give_one_threshold_per_channel_on_4d_and_one_per_layer_on_2d(rule):
    g = torch.Generator().manual_seed(0)
    conv = torch.relu(torch.randn(8, 5, 4, 4, generator=g))
    lin = torch.relu(torch.randn(8, 7, generator=g))
    kw = dict(T=8, percentile=99.0)
    assert batch_threshold(rule, conv, channelwise=True, **kw).shape == (5,)
    on_linear = batch_threshold(rule, lin, channelwise=True, **kw)
    assert on_linear.shape == ()
    assert torch.equal(on_linear, batch_threshold(rule, lin, channelwise=False, **kw))


def test_lambda_rule_keeps_one_value_and_the_4d_shape_rule():
    from ftbc.models.activations import QCFS

    act = QCFS(L=4, init_lambda=2.5)
    conv, lin = torch.rand(2, 3, 4, 4), torch.rand(2, 6)
    on_conv = batch_threshold("lambda", conv, module=act, channelwise=True)
    on_lin = batch_threshold("lambda", lin, module=act, channelwise=True)
    assert on_conv.shape == (3,) and on_lin.shape == ()
    assert torch.all(on_conv == on_lin)


# -- SNN Calibration's "none" row ---------------------------------------------------------------

def test_snnc_none_is_the_release_no_calibration_run():
    """Release thresholds for --calib none (EMA of maxima), shift theta/(2T), v(0) = 0, no stage, T-dependent."""
    from ftbc.snn.graph import spiking_layers

    method = get_method("snnc_none")
    assert method.stages == () and method.v0 == 0.0 and method.shift and method.t_dependent
    assert method.activation == "relu" and (method.threshold_batches, method.threshold_batch_size) == (7, 128)
    assert get_method("snnc_none", "imagenet").stages == ()  # no stage on any dataset
    net, batches = tiny_net(), fixed_batches()
    want = reference_thresholds(net, batches, reference_max_threshold)
    gm = fold_bn(net)
    by_T = {}
    for T in (4, 16):
        snn = swap_activations(gm, observe_thresholds(gm, method, batches, T), method, T)
        layers = dict(spiking_layers(snn))
        assert set(layers) == set(want)
        for name, n in layers.items():
            theta = want[name].float().clamp_min(1e-6)
            assert torch.equal(n.threshold, theta), name
            assert torch.equal(n.v0, torch.zeros_like(n.v0)), name
            assert torch.equal(n.offset, theta / (2 * T)), name
        by_T[T] = {k: n.offset.clone() for k, n in layers.items()}
    assert all(not torch.equal(by_T[4][k], by_T[16][k]) for k in by_T[4])  # the shift depends on T


def test_snnc_none_sits_before_the_calibrated_rows_and_maxnorm_has_no_shift():
    from baselines import list_methods

    names = list_methods("snnc_*")
    assert names == ["snnc_none", "snnc_light", "snnc_advanced"]
    maxnorm = get_method("maxnorm")
    assert not maxnorm.shift and maxnorm.threshold == "max" and not maxnorm.t_dependent and not maxnorm.stages
    assert "not SNNC's 'none' row" in maxnorm.summary


@pytest.mark.parametrize("configfile, relu_anns", [("config/config.yaml", 1), ("config/smoke.yaml", 1),
                                                   ("config/paper.yaml", 14)])
def test_every_shipped_grid_runs_snnc_none_once_per_T_on_each_relu_ann(configfile, relu_anns):
    from pathlib import Path

    import yaml

    from ftbc.run import grid

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / configfile).read_text())
    jobs = [e for e in grid.evaluations(config) if e.method == "snnc_none"]
    assert len(jobs) == relu_anns * len(config["T"])
    assert {e.ann.act for e in jobs} == {"relu"} and {e.steps for e in jobs} == {str(T) for T in config["T"]}
