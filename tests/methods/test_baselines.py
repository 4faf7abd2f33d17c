"""The baselines: registry, SNN Calibration's stages, QCFS's theorem, RTS's neuron."""

import pytest
import torch
from torch import nn

import baselines
from _nets import tiny_resnet, tiny_vgg
from baselines import Method, Stage, get_method, list_methods, register_method
from baselines.snnc import _capture, feeding_layer, layer_loss, quantise
from ftbc.snn.stages import STAGES
from ftbc.snn.calibration import ann_targets, layerwise_pass
from ftbc.snn.ftbc_solvers import channel_mean
from ftbc.snn.conversion import CalibrationContext, convert
from ftbc.snn.graph import spiking_layers
from ftbc.errors import UserError
from ftbc.models.activations import QCFS, ClipReLU
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.thresholds import mse_search, quantisation_error

PAPER_METHODS = ["maxnorm", "snnc_light", "snnc_advanced", "qcfs", "rts", "ftbc_relu", "ftbc_qcfs", "ftbc_rts"]


TINY_BUDGET = dict(images=32, iterations=2, batches=2, batch_size=16, samples=64, chunk=32)


def small(method: Method, **kw) -> Method:
    """The same method on a tiny calibration budget."""
    changes = {"threshold_batches": 2, "threshold_batch_size": 32, **kw}
    for s in method.stages:
        changes.update({f"{s.name}.{k}": v for k, v in TINY_BUDGET.items() if k in STAGES[s.name].defaults})
    return method.with_overrides(changes)


# -- registry ---------------------------------------------------------------------------

def test_registry_has_the_paper_methods_and_rejects_duplicates():
    for name in PAPER_METHODS + ["opi", "ftbc_relu_quantile"]:
        assert name in list_methods()
    assert list_methods("ftbc_*")[0] == "ftbc_relu"
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("qcfs"))
    with pytest.raises(UserError, match="registered methods"):
        get_method("nope")


def test_t_dependence_follows_the_constants():
    dep = {n: get_method(n).t_dependent for n in PAPER_METHODS}
    assert dep == {"maxnorm": False, "snnc_light": True, "snnc_advanced": True, "qcfs": False, "rts": True,
                   "ftbc_relu": True, "ftbc_qcfs": False, "ftbc_rts": True}


def test_dataset_settings_follow_the_release():
    assert dict(get_method("ftbc_relu", "cifar10").stage("ftbc").params)["iterations"] == 100
    assert dict(get_method("ftbc_relu", "imagenet").stage("ftbc").params)["iterations"] == 10
    assert [s.name for s in get_method("snnc_advanced", "imagenet").stages] == ["weight", "potential"]
    assert [s.name for s in get_method("snnc_advanced", "cifar10").stages] == ["potential"]
    assert get_method("ftbc_relu").channelwise and get_method("ftbc_relu").shift


# -- SNNC -------------------------------------------------------------------------------

def test_mse_threshold_is_the_brute_force_minimiser():
    torch.manual_seed(0)
    a = torch.relu(torch.randn(64, 3, 5, 5)) ** 1.5
    for T in (2, 8, 32):
        got = mse_search(a, T, channelwise=True)
        for c in range(3):
            rows = a[:, c].reshape(1, -1)
            top = rows.max()
            errs = [quantisation_error(rows, (top * (1 - 0.01 * k)).reshape(1), T).item() for k in range(95)]
            best = top * (1 - 0.01 * min(range(95), key=errs.__getitem__))
            assert got[c].item() == pytest.approx(best.item(), rel=1e-6)


def rate_errors(snn, ann, x, T):
    errs = {}

    def probe(name, n, xs, a):
        r = (n.scan(xs) * n.theta(xs.dim() - 1)).mean(0)
        errs[name] = channel_mean(r - a).abs().mean().item()

    layerwise_pass(snn, ann, x, T, probe)
    return errs


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_bias_calibration_zeroes_mean_rate_error(make):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    T = 8
    m = small(get_method("snnc_light"))
    before = convert(make(), m.with_overrides({"stages": ()}), data=x, T=T)
    after = convert(make(), m, data=x, T=T)  # the one calibration batch is all of x
    e0, e1 = rate_errors(before.snn, before.ann, x, T), rate_errors(after.snn, after.ann, x, T)
    for k in e0:
        assert e1[k] < 0.35 * e0[k] + 1e-3, (k, e0[k], e1[k])


def test_potential_calibration_sets_v0_by_the_formula():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    T = 8
    m = small(get_method("snnc_advanced"))
    plain = convert(tiny_vgg(), m.with_overrides({"stages": ()}), data=x, T=T)
    cal = convert(tiny_vgg(), m, data=x, T=T)
    first, n0 = spiking_layers(plain.snn)[0]
    a = ann_targets(plain.ann, x)[first]
    # the first layer's input does not depend on any calibration: its rate before PC is plain
    seen = {}
    layerwise_pass(plain.snn, plain.ann, x, T,
                   lambda name, n, xs, t: seen.setdefault(name, (n.scan(xs) * n.theta(xs.dim() - 1)).mean(0)))
    expect = T * (a.mean(0) - seen[first].mean(0))
    got = dict(spiking_layers(cal.snn))[first].v0
    torch.testing.assert_close(got, expect)
    assert got.shape == a.shape[1:]  # per neuron: C x H x W


def test_weight_calibration_lowers_the_layer_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    T = 4
    m = small(get_method("snnc_light")).with_overrides({"stages": ()})
    res = convert(tiny_vgg(), m, data=x, T=T)
    name, n = spiking_layers(res.snn)[1]
    lname, layer = feeding_layer(res.snn, name)
    ctx = CalibrationContext(ann=res.ann, data=x, T=T)
    inp, rest, a = _capture(res.snn, ctx, x, name, lname, "auto")
    theta = n.theta(a.dim())
    before = layer_loss(layer, theta, T, inp, rest, a).item()
    from baselines.snnc import weight_calibration

    weight_calibration(res.snn, ctx, samples=64, iterations=150, batch_size=32, lr=1e-3, chunk=32, order="auto")
    after = layer_loss(layer, theta, T, inp, rest, a).item()
    assert after < before
    assert any(e["stage"] == "weight" for e in ctx.log)


def test_quantise_has_straight_through_gradient():
    """The release clamps, then floors: the gradient flows in the lowest step (z = 0.1) too."""
    z = torch.tensor([-0.5, 0.1, 0.3, 0.77, 2.0], requires_grad=True)
    q = quantise(z, torch.tensor(1.0), 4)
    assert q.tolist() == [0.0, 0.0, 0.25, 0.75, 1.0]
    q.sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# -- QCFS -------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [2, 4, 8])
def test_qcfs_theorem_snn_with_T_equal_L_reproduces_the_activation(L):
    lam = 1.7
    act = QCFS(L=L, init_lambda=lam)
    z = torch.linspace(-0.5, 2.2, 301)
    n = IFNeuron(threshold=lam, v0=lam / 2)
    out = sum(n(z.unsqueeze(0)) for _ in range(L)) / L  # rate x theta over T = L steps
    torch.testing.assert_close(out[0], act(z).detach(), rtol=0, atol=1e-5)


def test_qcfs_conversion_uses_lambda_and_half_potential():
    torch.manual_seed(0)
    net = tiny_vgg(act=lambda: QCFS(L=4, init_lambda=2.0))
    with torch.no_grad():
        for i, q in enumerate(m for m in net.modules() if isinstance(m, QCFS)):
            q.lam.fill_(1.0 + i)
    res = convert(net, small(get_method("qcfs")), data=torch.randn(8, 3, 16, 16), T=4)
    thetas = [n.threshold.item() for _, n in spiking_layers(res.snn)]
    assert thetas == [1.0, 2.0, 3.0]
    assert [n.v0.item() for _, n in spiking_layers(res.snn)] == [0.5, 1.0, 1.5]


# -- RTS --------------------------------------------------------------------------------

def test_rts_thresholds_are_maxima_shift_once_per_step_and_spiking_classifier():
    torch.manual_seed(0)
    net = tiny_vgg(act=lambda: ClipReLU(1.0))
    x = torch.randn(64, 3, 16, 16)
    T = 5
    res = convert(net, small(get_method("rts")), data=x, T=T)
    acts = ann_targets(res.ann, x)
    layers = dict(spiking_layers(res.snn))
    for name, a in acts.items():
        assert layers[name].threshold.item() == pytest.approx(a.max().item())
        assert layers[name].offset.item() == pytest.approx(a.max().item() / (2 * T))
    assert "output_neuron" in layers
    assert layers["output_neuron"].threshold.item() == pytest.approx(res.ann(x).max().item())
    # once per step: a silent input accumulates exactly k * theta/2T after k steps
    n = IFNeuron(threshold=1.0, offset=1.0 / (2 * T))
    for k in range(1, T):
        n(torch.zeros(1, 1))
        assert n.v.item() == pytest.approx(k / (2 * T))


def test_clip_relu_gradient():
    z = torch.tensor([-1.0, 0.5, 0.9, 1.5], requires_grad=True)
    ClipReLU(1.0)(z).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


# -- every method, and one from outside the package ---------------------------------------

ACT = {"relu": nn.ReLU, "qcfs": lambda: QCFS(L=4, init_lambda=2.0), "clip": lambda: ClipReLU(1.0)}


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_converts_and_runs(name):
    from ftbc.snn.simulation import simulate

    m = small(get_method(name))
    x = torch.randn(64, 3, 16, 16)
    res = convert(tiny_resnet(act=ACT[m.activation]), m, data=x, T=4)
    out = simulate(res.snn, x[:8], 4)
    assert out.shape == (4, 8, 5) and torch.isfinite(out).all()


def test_a_method_registered_from_outside_runs_end_to_end(tmp_path, monkeypatch):
    from ftbc.run.evaluation import run

    # a private copy of the registry: the method must not leak into later tests' list_methods()
    monkeypatch.setattr(baselines, "_METHODS", dict(baselines._METHODS))

    mine = register_method(Method(name="test_external_half_v0", activation="relu", threshold="percentile",
                                  percentile=99.0, v0=0.5, threshold_batches=2, threshold_batch_size=16,
                                  stages=(Stage("ftbc", dict(iterations=1, batches=1, batch_size=16)),)))
    assert "test_external_half_v0" in list_methods()
    x = torch.randn(48, 3, 16, 16)
    y = torch.randint(0, 5, (48,))
    acc, activity, details = run(model=tiny_vgg(), meta={"act": "relu", "arch": "tiny", "dataset": "toy"},
                                 method=mine, Ts=[1, 2, 4], calib_data=x, test_batches=[(x, y)],
                                 ann_accuracy=0.0)
    assert acc["t"].tolist() == [1, 2, 3, 4] and acc["method"].eq("test_external_half_v0").all()
    assert set(activity["t"]) == {1, 2, 3, 4}
    # By hand from tiny_vgg on 16 x 16 inputs: ReLU "2" (8 x 16 x 16) feeds, through the 2 x 2 pool, the 3 x 3
    # conv 8 -> 12 (12 * 9 = 108 synapses per spike); ReLU "6" (12 x 8 x 8) feeds, through pool and flatten,
    # Linear(192, 16) (16); ReLU "10" (16) feeds Linear(16, 5) (5).
    fan, size = {"2": 108, "6": 16, "10": 5}, {"2": 8 * 16 * 16, "6": 12 * 8 * 8, "10": 16}
    layer = activity["layer"].astype(str)
    assert sorted(set(layer)) == sorted(fan)
    spikes = activity["spikes_per_image"]
    assert activity["synops_per_image"].tolist() == pytest.approx((spikes * layer.map(fan)).tolist())
    assert activity["firing_rate"].tolist() == pytest.approx((spikes / layer.map(size)).tolist())
    # a count over the 48 test images: a whole number of spikes per layer and step, and some at all
    assert ((spikes * 48).round() - spikes * 48).abs().max() < 1e-6 and spikes.sum() >= 1


def test_plugin_methods_reach_the_cli(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "my_method.py").write_text(
        "from baselines import Method, register_method\n"
        "register_method(Method(name='my_plugin_method', activation='relu', v0=0.25,\n"
        "                       summary='a plugin'))\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "FTBC_PLUGINS": "my_method", "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}"}
    out = subprocess.run([sys.executable, "-m", "ftbc", "methods", "my_*"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "my_plugin_method" in out and "relu" in out
    bad = subprocess.run([sys.executable, "-m", "ftbc", "methods"], capture_output=True, text=True,
                         env={**env, "FTBC_PLUGINS": "no_such_module_xyz"})
    assert bad.returncode == 2 and "FTBC_PLUGINS" in bad.stderr and "Traceback" not in bad.stderr


def test_plugin_modules_are_read_from_the_environment(monkeypatch):
    from baselines import plugin_modules

    monkeypatch.setenv("FTBC_PLUGINS", " my_a, ,my_b ")
    assert plugin_modules() == ["my_a", "my_b"]  # what result.json records
    assert plugin_modules("only_c") == ["only_c"]
    monkeypatch.delenv("FTBC_PLUGINS")
    assert plugin_modules() == []


def test_methods_registered_by_tests_do_not_leak():
    # the workflow test compares the grid against list_methods(): a method a test registers must end with it.
    # conftest's autouse _restore_registries does that after every test, whatever the order; here its two
    # halves by hand, on a method registered without monkeypatch
    from conftest import restore_registries, snapshot_registries

    assert not [n for n in list_methods() if n.startswith("test_")]
    snapshot = snapshot_registries()
    register_method(Method(name="test_leak_probe", activation="relu"))
    assert "test_leak_probe" in list_methods()
    assert restore_registries(snapshot) == ["baselines._METHODS"]
    assert not [n for n in list_methods() if n.startswith("test_")]
    assert list_methods() == list(snapshot["baselines._METHODS"])
