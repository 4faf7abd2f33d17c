"""RTS on residual networks: where the shift theta/(2T) goes, checked against the release's simulation.

The RTS release (Deng & Gu, ICLR 2021; docs/methods.md sections 4 and 7) adds the
shift inside its spike layers only, to the current of the convolution or
linear layer each one wraps; a residual block sums its two branches into a
membrane of its own that gets no shift. ``release_simulation`` below is a
step-by-step transcription of that simulation, written for this suite from
docs/methods.md and a reading of the release; the suite's converted SNN must give
the same per-step outputs bit for bit.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _nets import tiny_resnet
from baselines import get_method, list_methods
from ftbc.snn.graph import activation_sites, fed_by_addition, fold_bn, spiking_layers
from ftbc.snn.conversion import convert, swap_activations
from ftbc.models import ClipReLU, create_model
from ftbc.models.resnet import ResNet
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.monitors import SpikeMonitor
from ftbc.snn.simulation import simulate

N_CALIB = 32  # threshold_batches * threshold_batch_size of ``_rts``: every calibration image is used


def _rts(name: str = "rts"):
    """The method with a small threshold budget that still covers all N_CALIB images."""
    return get_method(name).with_overrides({"threshold_batches": 2, "threshold_batch_size": N_CALIB // 2})


def tiny_rts_resnet(seed: int = 0, classes: int = 3) -> ResNet:
    """The release's network in miniature, fixed weights: 2-conv stem + Dropout + AvgPool(2), a block with an
    identity shortcut, a block with a 1x1 stride-2 projection, no BN, no biases, the 6 x 2 x 2 map of an
    8 x 8 image flattened into Linear(24, classes, bias=False)."""
    net = ResNet(layers=(1, 1), channels=(4, 6), stem=((4, 1), (4, 1)), stem_pool=(2, 2, 0), norm=False,
                 conv_bias=False, drop_rate=0.2, pool_size=2, fc_bias=False, num_classes=classes,
                 act_layer=lambda: ClipReLU(1.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return net.eval()


def _images(n: int, seed: int, size: int = 8) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- the release's simulation, transcribed ------------------------------------------------------

class ReleaseSpikeLayer:
    """A weighted op and its IF neuron: the op's output plus the shift thresh/(2T) is integrated, the
    membrane starts at 0, fires thresh when it reaches thresh, and is reset by subtraction."""

    def __init__(self, op, thresh: float, T: int):
        self.op, self.thresh, self.shift, self.mem = op, thresh, thresh / (2 * T), 0

    def __call__(self, inp: Tensor) -> Tensor:
        x = self.op(inp) + self.shift
        self.mem = self.mem + x
        spike = self.mem.ge(self.thresh).float() * self.thresh
        self.mem = self.mem - spike
        return spike


class ReleaseBlock:
    """A residual block: the first conv is a spike layer (shifted); the second conv's current and the
    shortcut's current are summed into the block's own membrane, with no shift."""

    def __init__(self, conv1, conv2, shortcut, thresh1: float, thresh2: float, T: int):
        self.first = ReleaseSpikeLayer(conv1, thresh1, T)
        self.conv2, self.shortcut, self.thresh, self.mem = conv2, shortcut, thresh2, 0

    def __call__(self, x: Tensor) -> Tensor:
        y = self.first(x)
        self.mem = self.mem + (self.conv2(y) + self.shortcut(x))
        spike = self.mem.ge(self.thresh).float() * self.thresh
        self.mem = self.mem - spike
        return spike


def _conv(conv: nn.Conv2d):
    return lambda x: F.conv2d(x, conv.weight, None, conv.stride, conv.padding)


def release_thresholds(net: ResNet, x: Tensor) -> dict[str, float]:
    """The release's thresholds: each activation's maximum on the calibration images, and the maximum logit."""
    maxima: dict[str, float] = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: maxima.__setitem__(name, o.max().item()))
               for name, m in net.named_modules() if isinstance(m, ClipReLU)]
    with torch.no_grad():
        maxima["output"] = net(x).max().item()
    for h in handles:
        h.remove()
    return maxima


@torch.no_grad()
def release_simulation(net: ResNet, thresh: dict[str, float], x: Tensor, T: int) -> Tensor:
    """Per-step outputs [T, N, K] of the release's SNN built from ``net``'s weights and ``thresh``."""
    stem_convs = [(i, m) for i, m in enumerate(net.stem) if isinstance(m, nn.Conv2d)]
    stem = [ReleaseSpikeLayer(_conv(m), thresh[f"stem.{i + 1}"], T) for i, m in stem_convs]
    blocks = []
    for s, stage in enumerate(net.stages):
        for b, blk in enumerate(stage):
            short = _conv(blk.shortcut[0]) if isinstance(blk.shortcut, nn.Sequential) else (lambda z: z)
            p = f"stages.{s}.{b}"
            blocks.append(ReleaseBlock(_conv(blk.conv1), _conv(blk.conv2), short,
                                       thresh[f"{p}.act1"], thresh[f"{p}.act2"], T))
    classifier = ReleaseSpikeLayer(lambda z: F.linear(z, net.fc.weight), thresh["output"], T)
    outs = []
    for _ in range(T):
        out = x
        for layer in stem:
            out = layer(out)
        out = F.avg_pool2d(out, 2)
        for blk in blocks:
            out = blk(out)
        outs.append(classifier(out.view(x.size(0), -1)))
    return torch.stack(outs)


# -- the tests ----------------------------------------------------------------------------------

def test_rts_methods_leave_the_shift_off_after_residual_adds_and_snnc_keeps_it():
    gm = fold_bn(tiny_resnet(act=lambda: ClipReLU(1.0)))
    names = [n for n, _ in activation_sites(gm)]
    after_add = fed_by_addition(gm)
    assert after_add == {"block1.act2", "block2.act2"}
    thresholds = {n: torch.tensor(1.0 + i) for i, n in enumerate(names)}
    T = 4
    for name in list_methods():
        method = get_method(name)
        snn = swap_activations(gm, thresholds, method, T)
        layers = dict(spiking_layers(snn))
        for n in names:
            shifted = method.shift and (n not in after_add or method.shift_after_add)
            assert layers[n].offset.item() == (thresholds[n].item() / (2 * T) if shifted else 0.0), (name, n)
    for name in ("rts", "ftbc_rts", "ftbc_rts_quantile"):
        assert get_method(name).shift and not get_method(name).shift_after_add, name
    for name in ("snnc_light", "snnc_advanced", "ftbc_relu", "ftbc_relu_quantile"):
        assert get_method(name).shift and get_method(name).shift_after_add, name


def test_addition_is_found_in_every_spelling():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            y = self.a(torch.add(x, x.flip(0)))
            z = self.b(y.add(x))
            w = z * 2
            w += y
            return self.d(self.c(w))

    gm = fold_bn(Net())
    assert fed_by_addition(gm) == {"a", "b", "c"}  # d's input is c's output, not an addition
    assert any(n.target is operator.add for n in gm.graph.nodes)  # `w += y` traces as operator.add


@pytest.mark.parametrize("T", [3, 4])
def test_rts_snn_matches_the_release_residual_simulation(T):
    net = tiny_rts_resnet()
    calib, test = _images(N_CALIB, seed=1), _images(16, seed=2)
    res = convert(net, _rts(), data=calib, T=T)
    layers = dict(spiking_layers(res.snn))
    thresh = release_thresholds(net, calib)
    # offsets: 0 after the residual additions, theta/(2T) everywhere else (the classifier included)
    assert set(layers) == set(thresh) - {"output"} | {"output_neuron"}
    for name, n in layers.items():
        key = "output" if name == "output_neuron" else name
        assert n.threshold.item() == thresh[key], name
        expected = 0.0 if name.endswith("act2") else n.threshold.item() / (2 * T)
        assert n.offset.item() == pytest.approx(expected, rel=1e-7, abs=0), name
    assert sorted(n for n in layers if layers[n].offset.item() == 0) == ["stages.0.0.act2", "stages.1.0.act2"]

    with SpikeMonitor(res.snn) as counted:
        ours = simulate(res.snn, test, T, mode="s")
    assert all(counted.counts(n, T).sum() > 0 for n in counted.layers), "a silent layer would make the check empty"
    ref = release_simulation(net, thresh, test, T)
    assert ours.shape == ref.shape == (T, 16, 3)
    assert torch.equal(ours, ref)  # bit-equal, step by step
    # layer-major order: the same numbers up to the summation order of batched convolutions
    torch.testing.assert_close(simulate(res.snn, test, T, mode="m"), ref, rtol=0, atol=1e-6)

    # the check discriminates: shifting after the additions too (SNN Calibration's placement) changes the output
    shifted_everywhere = convert(net, _rts().with_overrides({"shift_after_add": True}), data=calib, T=T)
    assert not torch.equal(simulate(shifted_everywhere.snn, test, T, mode="s"), ref)


def test_resnet20_rts_converts_with_rts():
    torch.manual_seed(0)
    net = create_model("resnet20_rts", act_layer="clip", y_th=1.0).eval()
    x = torch.randn(4, 3, 32, 32)
    T = 2
    res = convert(net, get_method("rts").with_overrides({"threshold_batches": 1, "threshold_batch_size": 4}),
                  data=x, T=T)
    layers = dict(spiking_layers(res.snn))
    assert len(layers) == 3 + 16 + 1  # stem, two per block, spiking classifier
    unshifted = sorted(n for n, m in layers.items() if m.offset.item() == 0)
    assert unshifted == sorted(f"stages.{s}.{b}.act2" for s in range(4) for b in range(2))
    for name, m in layers.items():
        if name not in unshifted:
            assert m.offset.item() == pytest.approx(m.threshold.item() / (2 * T), rel=1e-7)
    assert sum(isinstance(m, nn.Dropout) for m in res.snn.modules()) == 10  # kept, the identity in eval
    assert not res.snn.training
    out = simulate(res.snn, x, T, mode="s")
    assert out.shape == (T, 4, 10) and torch.isfinite(out).all()
    assert all(isinstance(m, IFNeuron) for m in layers.values())
