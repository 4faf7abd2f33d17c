"""The simulation engine: both execution orders against a plain step-by-step loop,
the conversion limit, and per-t accuracy from one run."""

import copy

import pytest
import torch
from torch import nn

from _nets import tiny_resnet, tiny_vgg
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.snn.method import Method
from ftbc.snn.neuron import IFNeuron
import ftbc.snn.simulation as sim
from ftbc.snn.simulation import accuracy_per_step, correct_per_step, layer_major_chunk, simulate, widest_layer

MAXNORM = Method(name="test_max", activation="relu", threshold="max", threshold_reduce="max",
                 v0=0.5, threshold_batches=2, threshold_batch_size=32)
CHANNELWISE = MAXNORM.with_overrides({"channelwise": True})


class PlainIF(nn.Module):
    """The neuron written out longhand, sharing nothing with ftbc.snn.neuron."""

    def __init__(self, n: IFNeuron):
        super().__init__()
        self.th, self.v0, self.off, self.b = n.threshold, n.v0, n.offset, n.bias
        self.v, self.t = None, 0

    def _c(self, p, x):  # per-channel broadcast
        return p.reshape(1, -1, *[1] * (x.dim() - 2)) if p.dim() == 1 else p

    def forward(self, x):
        if self.v is None:
            self.v = torch.zeros_like(x) + self._c(self.v0, x)
        cur = x + self._c(self.off, x)
        if self.t < self.b.shape[0]:
            cur = cur + self._c(self.b[self.t], x)
        self.v = self.v + cur
        th = self._c(self.th, x)
        spike = (self.v >= th).to(x.dtype)
        self.v = self.v - spike * th
        self.t += 1
        return spike * th


def reference_simulate(snn, x, T):
    ref = copy.deepcopy(snn)
    for name, n in spiking_layers(ref):
        parent, _, leaf = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, leaf, PlainIF(n))
    with torch.no_grad():
        return torch.stack([ref(x) for _ in range(T)])


def converted(net, x, method=MAXNORM, T=16):
    return convert(net, method, data=x, T=T).snn


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
@pytest.mark.parametrize("mode", ["s", "m"])
def test_engine_matches_plain_step_loop(make, mode):
    torch.manual_seed(1)
    x = torch.randn(64, 3, 16, 16, dtype=torch.float64)
    snn = converted(make(), x.float(), CHANNELWISE).double()
    for _, n in spiking_layers(snn):  # exercise the offset and FTBC bias paths too
        c = n.threshold.numel()
        n.offset = torch.rand(c, dtype=torch.float64) * 0.05
        n.bias = torch.randn(5, c, dtype=torch.float64) * 0.05
    T = 9
    ref = reference_simulate(snn, x, T)
    out = simulate(snn, x, T, mode=mode, chunk_size=20)  # chunking crosses the batch
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


def test_modes_agree_in_float32():
    x = torch.randn(40, 3, 16, 16)
    snn = converted(tiny_resnet(), x)
    a = simulate(snn, x, 12, mode="s")
    b = simulate(snn, x, 12, mode="m")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_layer_major_chunks_fit_the_memory_budget(monkeypatch):
    """The default layer-major chunk holds the widest layer's T x chunk activations (input,
    current, output) within the budget, and still gives the unchunked outputs."""
    x = torch.randn(40, 3, 16, 16)
    snn = converted(tiny_vgg(), x)
    widest = widest_layer(snn, x)
    assert widest == 8 * 16 * 16  # tiny_vgg's first convolution: 8 channels at 16 x 16
    T = 6
    per_image = 3 * T * widest * 4
    assert layer_major_chunk(snn, x, T) == 4096 // T  # the sample cap binds for a small net
    monkeypatch.setattr(sim, "LAYER_MAJOR_BUDGET", 7 * per_image + per_image // 2)
    assert layer_major_chunk(snn, x, T) == 7
    seen = []
    real = sim._simulate_chunk
    monkeypatch.setattr(sim, "_simulate_chunk", lambda net, xc, T, mode: seen.append(len(xc)) or real(net, xc, T, mode))
    out = simulate(snn, x, T, mode="m")
    assert seen == [7] * 5 + [5]
    torch.testing.assert_close(out, simulate(snn, x, T, mode="s"), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(sim, "LAYER_MAJOR_BUDGET", 1)  # not even one image fits: one at a time
    assert layer_major_chunk(snn, x, T) == 1


def test_bad_input_shapes_and_T():
    x = torch.randn(4, 3, 16, 16)
    snn = converted(tiny_vgg(), x)
    with pytest.raises(ValueError, match="T must be"):
        simulate(snn, x, 0)
    with pytest.raises(ValueError, match="no IF neurons"):
        simulate(tiny_vgg(), x, 4)


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_conversion_limit_rates_approach_ann(make):
    """Time-averaged output of every spiking layer -> ANN activation as T grows."""
    torch.manual_seed(2)
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    res = convert(make(), MAXNORM, data=x, T=1)  # max thresholds over these very inputs: no clipping
    snn, ann = res.snn, res.ann
    from ftbc.snn.calibration import ann_targets

    target = ann_targets(ann, x)
    errors = {}
    for T in (8, 64, 512):
        sums, handles = {}, []
        for name, n in spiking_layers(snn):
            handles.append(n.register_forward_hook(
                lambda m, i, o, name=name: sums.__setitem__(name, sums.get(name, 0) + o)))
        simulate(snn, x, T, mode="s")
        for h in handles:
            h.remove()
        errors[T] = {k: ((sums[k] / T) - target[k]).abs().mean().item() / target[k].abs().mean().item()
                     for k in target}
    for k in target:
        assert errors[512][k] < errors[8][k] / 4, (k, errors)
        assert errors[512][k] < 0.05, (k, errors)


def test_accuracy_at_t_equals_separate_run_of_length_t():
    torch.manual_seed(3)
    x = torch.randn(48, 3, 16, 16)
    y = torch.randint(0, 5, (48,))
    snn = converted(tiny_vgg(), x)
    full = accuracy_per_step(snn, [(x, y)], 16)
    for t in (1, 2, 5, 16):
        alone = accuracy_per_step(snn, [(x, y)], t)
        assert alone[-1].item() == full[t - 1].item()
        torch.testing.assert_close(simulate(snn, x, t), simulate(snn, x, 16)[:t])


def test_correct_per_step_uses_cumulative_logits():
    # step 1 favours class 0, step 2 favours class 1 strongly enough to flip the sum
    out = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]]])
    assert correct_per_step(out, torch.tensor([1])).tolist() == [0, 1]
    assert correct_per_step(out, torch.tensor([0])).tolist() == [1, 0]
