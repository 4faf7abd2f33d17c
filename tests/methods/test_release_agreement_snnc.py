"""SNN Calibration's stages, QCFS and OPI agree with step-by-step transcriptions of the releases.

Each transcription below is written from the algorithm (docs/methods.md sections 1-3),
not from the suite's code: it simulates the *whole* network one step at a time
with the plain out-of-place neuron of ``ftbc.bench.reference`` and calibrates layer by
layer in forward order, as the releases do. The suite's layer-major driver must
give the same values. Everything runs in float64; the operations are the same
but summed in another order, so the tolerance is 1e-9 (stated per test).
"""

import copy

import pytest
import torch
from torch import nn

from _nets import tiny_resnet, tiny_vgg
from baselines import get_method
from baselines.snnc import bias_calibration, feeding_layer, potential_calibration, weight_calibration
from ftbc.bench.reference import PlainIF, _ann_activation, plain_copy, stepwise_simulate
from ftbc.snn.conversion import CalibrationContext, convert
from ftbc.snn.graph import spiking_layers
from ftbc.models.activations import QCFS
from ftbc.snn.simulation import simulate

T = 5
N = 24


def _setup(make, method_name, act=nn.ReLU):
    torch.manual_seed(4)
    x = torch.randn(N, 3, 16, 16, dtype=torch.float64)
    method = get_method(method_name).with_overrides({"threshold_batches": 1, "threshold_batch_size": N})
    res = convert(make(act=act), method.with_overrides({"stages": ()}), data=x.float(), T=T)
    return res.snn.double(), res.ann.double(), x


def _layer_rates(net, name, x):
    """Time-averaged output of layer ``name`` over T whole-network steps."""
    outs = []
    h = net.get_submodule(name).register_forward_hook(lambda m, i, o: outs.append(o))
    try:
        stepwise_simulate(net, x, T)
    finally:
        h.remove()
    return torch.stack(outs).mean(0)


def release_bias_correction(snn, ann, x):
    """BC: for each layer in order, bias_c -= mean_{N,H,W}(SNN rate - ANN activation)."""
    net = plain_copy(snn)
    names = [n for n, m in net.named_modules() if isinstance(m, PlainIF)]
    for name in names:
        layer = net.get_submodule(name)
        err = _layer_rates(net, name, x) - _ann_activation(ann, name, x)
        layer.offset = layer.offset - err.mean(dim=[0, *range(2, err.dim())])
    return {n: net.get_submodule(n).offset for n in names}


def release_potential_correction(snn, ann, x):
    """PC: for each layer in order, per neuron v(0) += T * (E_batch[a] - E_batch[rate])."""
    net = plain_copy(snn)
    names = [n for n, m in net.named_modules() if isinstance(m, PlainIF)]
    for name in names:
        layer = net.get_submodule(name)
        err = _ann_activation(ann, name, x).mean(0) - _layer_rates(net, name, x).mean(0)
        layer.v0 = layer.v0 + T * err
    return {n: net.get_submodule(n).v0 for n in names}


@pytest.mark.parametrize("order", ["layer", "step"])
@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_bias_calibration_matches_the_release(make, order):
    snn, ann, x = _setup(make, "snnc_light")
    theirs = release_bias_correction(snn, ann, x)
    ctx = CalibrationContext(ann=ann, data=x, T=T)
    bias_calibration(snn, ctx, images=N, order=order)
    assert ctx.log == [{"stage": "bias", "order": order}]
    ours = {n: m.offset for n, m in spiking_layers(snn)}
    assert ours.keys() == theirs.keys()
    shift = {n: m.threshold / (2 * T) for n, m in spiking_layers(snn)}
    for k in ours:
        assert (ours[k] - shift[k]).abs().max() > 0  # the stage moved every offset away from the shift
        torch.testing.assert_close(ours[k], theirs[k].expand_as(ours[k]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("order", ["layer", "step"])
@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_potential_calibration_matches_the_release(make, order):
    snn, ann, x = _setup(make, "snnc_advanced")
    theirs = release_potential_correction(snn, ann, x)
    ctx = CalibrationContext(ann=ann, data=x, T=T)
    potential_calibration(snn, ctx, images=N, order=order)
    ours = {n: m.v0 for n, m in spiking_layers(snn)}
    for k in ours:
        assert ours[k].abs().max() > 0
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-9)


def release_weight_calibration(snn, ann, x, *, iterations, batch_size, lr, seed):
    """WC: per layer in order, cache the time-averaged input (summed over T whole-network steps,
    / T) and the ANN output, then Adam on the weight with a cosine schedule over the loss
    sum_channels (theta/T floor_ste(clamp(W r T / theta, 0, T)) - a)^2 averaged over the rest."""
    net = plain_copy(snn)
    g = torch.Generator().manual_seed(seed)
    for name, _ in spiking_layers(snn):
        found = feeding_layer(snn, name)
        if found is None:
            continue
        layer = net.get_submodule(found[0])
        neuron = net.get_submodule(name)
        seen = []
        h = layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        stepwise_simulate(net, x, T)
        h.remove()
        r = torch.stack(seen).sum(0) / T
        with torch.no_grad():
            a = _ann_activation(ann, name, x)
        theta = neuron.theta.reshape(1, -1, *[1] * (a.dim() - 2)) if neuron.theta.dim() else neuron.theta
        opt = torch.optim.Adam([layer.weight], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=0.0)
        with torch.enable_grad():
            layer.weight.requires_grad_(True)
            for _ in range(iterations):
                idx = torch.randperm(len(r), generator=g)[:batch_size]
                u = torch.clamp(layer(r[idx]) / theta * T, min=0, max=T)
                out = ((u.floor() - u).detach() + u) * theta / T
                loss = (out - a[idx]).abs().pow(2).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            layer.weight.requires_grad_(False)
    return {n: m.weight.detach() for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("order", ["layer", "step"])
def test_weight_calibration_matches_the_release_for_a_few_iterations(order):
    """Three Adam steps per layer (lr 1e-3 so that they show), float64, within 1e-9."""
    snn, ann, x = _setup(tiny_vgg, "snnc_advanced")
    theirs = release_weight_calibration(snn, ann, x, iterations=3, batch_size=8, lr=1e-3, seed=0)
    ctx = CalibrationContext(ann=ann, data=x, T=T, seed=0)
    before = {n: m.weight.clone() for n, m in snn.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    # the stage draws its images with seed + 3: hand it the same images in the same order
    drawn = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    ctx.data = x[torch.argsort(drawn)]
    weight_calibration(snn, ctx, samples=N, iterations=3, batch_size=8, lr=1e-3, chunk=N, order=order)
    ours = {n: m.weight for n, m in snn.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    changed = [k for k in ours if not torch.equal(ours[k], before[k])]
    assert len(changed) == len([n for n, _ in spiking_layers(snn)])  # every layer feeding a neuron moved
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-9)


def test_bias_calibration_check_fails_on_a_perturbed_order():
    """Calibrating the layers all at once (no forward order) must not pass for the release's loop."""
    snn, ann, x = _setup(tiny_vgg, "snnc_light")
    theirs = release_bias_correction(snn, ann, x)
    net = plain_copy(snn)
    names = list(theirs)
    errs = {n: _layer_rates(net, n, x) - _ann_activation(ann, n, x) for n in names}  # all from the raw SNN
    last = names[-1]
    lumped = net.get_submodule(last).offset - errs[last].mean(0)
    assert (lumped - theirs[last]).abs().max() > 1e-6


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_qcfs_conversion_matches_the_release_neuron(make):
    """QCFS: theta = lambda, v(0) = theta / 2, no shift; outputs equal the release's step loop."""
    act = lambda: QCFS(L=4, init_lambda=1.5)  # noqa: E731
    snn, ann, x = _setup(make, "qcfs", act=act)
    for name, n in spiking_layers(snn):
        assert torch.equal(n.threshold, torch.tensor(1.5, dtype=torch.float64))
        assert torch.equal(n.v0, n.threshold / 2) and torch.equal(n.offset, torch.zeros((), dtype=torch.float64))
    release = copy.deepcopy(snn)
    for _, n in spiking_layers(release):  # the release's neuron: v starts at theta/2, IF, soft reset
        n.offset = torch.zeros((), dtype=torch.float64)
    theirs = stepwise_simulate(plain_copy(release), x, 3 * T)
    torch.testing.assert_close(simulate(snn, x, 3 * T, mode="s"), theirs, rtol=0, atol=1e-9)


def test_qcfs_one_layer_rate_equals_the_activation_at_T_equals_L():
    """docs/methods.md section 3: constant current z, T = L: spike count = clip(floor(T z / theta + 1/2), 0, T)."""
    L, lam = 4, 2.0
    z = torch.linspace(-0.5, 2.5, 61, dtype=torch.float64).reshape(1, 61)
    net = nn.Sequential(nn.Identity(), QCFS(L=L, init_lambda=lam)).double()
    res = convert(net, get_method("qcfs").with_overrides({"threshold_batch_size": 1}), data=z.float(), T=L)
    out = simulate(res.snn.double(), z, L, mode="s")  # [T, 1, 61]
    count = (out / lam).sum(0)
    expected = torch.clamp(torch.floor(L * z / lam + 0.5), 0, L)
    assert torch.equal(count, expected)
    assert torch.equal(count * lam / L, QCFS(L=L, init_lambda=lam).double()(z).detach())


def test_opi_is_max_thresholds_with_half_initial_potential():
    torch.manual_seed(5)
    x = torch.randn(N, 3, 16, 16)
    res = convert(tiny_vgg(), get_method("opi").with_overrides({"threshold_batch_size": N, "threshold_batches": 1}),
                  data=x, T=8)
    ann = res.ann
    for name, n in spiking_layers(res.snn):
        a = _ann_activation(ann, name, x)
        assert torch.equal(n.threshold, a.max())  # one batch: the EMA starts at the first value
        assert torch.equal(n.v0, n.threshold / 2) and n.offset.abs().max() == 0
