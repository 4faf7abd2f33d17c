"""The accelerator path on CPU: the neuron stays exact under half-precision inputs, and
channels-last, the precision context and the compiled step change no spike."""

import pytest
import torch

from _nets import tiny_vgg
from ftbc.bench.accel import _fused_step, compiled_scan, fast_simulate, precision, to_channels_last
from ftbc.snn.conversion import convert
from ftbc.snn.method import Method
from ftbc.snn.neuron import IFNeuron, if_step, if_step_, step_backend
from ftbc.snn.simulation import simulate

METHOD = Method(name="accel_max", activation="relu", threshold="max", threshold_reduce="max",
                v0=0.5, channelwise=True, threshold_batches=1, threshold_batch_size=16)


def snn_and_input():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    return convert(tiny_vgg(), METHOD, data=x, T=6).snn, x


def test_neuron_integrates_half_precision_input_in_float32():
    torch.manual_seed(0)
    xs = torch.randn(5, 4, 3, 6, 6).bfloat16()
    n = IFNeuron(threshold=torch.rand(3) + 0.5, v0=0.25)
    out = torch.stack([n(xs[t]) for t in range(5)])
    assert out.dtype == torch.float32 and n.v.dtype == torch.float32
    n.reset()
    ref = torch.stack([n(xs[t].float()) for t in range(5)])
    assert torch.equal(out, ref)


def test_channels_last_and_fast_simulate_change_no_output_on_cpu():
    snn, x = snn_and_input()
    ref = simulate(snn, x, 6, mode="s")
    assert torch.equal(fast_simulate(snn, x, 6), ref)  # CPU defaults: the plain simulator
    snn_cl, x_cl = to_channels_last(snn, x.clone())
    for mode in ("s", "m"):
        torch.testing.assert_close(simulate(snn_cl, x_cl, 6, mode=mode), ref, rtol=1e-4, atol=1e-4)


def test_bf16_context_keeps_membranes_float32():
    snn, x = snn_and_input()
    seen = []
    for m in snn.modules():
        if isinstance(m, IFNeuron):
            m.register_forward_hook(lambda mod, i, o: seen.append((i[0].dtype, o.dtype)))
    with precision("cpu", "bf16"):
        out = simulate(snn, x, 3, mode="m")
    assert out.shape == (3, 16, 5)
    assert seen and all(o == torch.float32 for _, o in seen)
    assert any(i == torch.bfloat16 for i, _ in seen)  # the stateless layers did run in bf16
    with pytest.raises(ValueError, match="precision"):
        with precision("cpu", "fp8"):
            pass


def test_fused_step_is_bit_equal_to_the_eager_step():
    torch.manual_seed(0)
    theta = torch.rand(5, 1, 1) + 0.2
    v1 = torch.randn(8, 5, 3, 3)
    v2, v3 = v1.clone(), v1.clone()
    buf = torch.empty_like(v1)
    for _ in range(10):
        x = torch.randn(8, 5, 3, 3)
        s, _ = if_step(x, v1.clone(), theta)
        a = if_step_(v1, x, theta)
        b = _fused_step(v2, x, theta)
        _fused_step(v3, x, theta, out=buf)
        assert torch.equal(a, b) and torch.equal(a, buf) and torch.equal(a, s * theta)
        assert torch.equal(v1, v2) and torch.equal(v1, v3)


def test_a_step_backend_runs_in_every_neuron_and_changes_no_spike():
    """The backend is chosen around a block of code: inside it every neuron, in both step modes,
    runs the given step (here the fused step, eager); outside, the default step again."""
    snn, x = snn_and_input()
    ref = {mode: simulate(snn, x, 6, mode=mode) for mode in ("s", "m")}
    calls = []

    def fused(v, x, theta, out=None):
        calls.append(1)
        return _fused_step(v, x, theta, out=out)

    with step_backend(fused):
        for mode in ("s", "m"):  # one chunk: no chunk-sizing probe step
            assert torch.equal(simulate(snn, x, 6, mode=mode, chunk_size=len(x)), ref[mode])
    layers = sum(isinstance(m, IFNeuron) for m in snn.modules())
    assert len(calls) == 2 * 6 * layers  # every step of every layer, in both modes
    simulate(snn, x, 6)
    assert len(calls) == 2 * 6 * layers
    with pytest.raises(RuntimeError, match="boom"):
        with step_backend(fused):
            raise RuntimeError("boom")
    simulate(snn, x, 6)
    assert len(calls) == 2 * 6 * layers  # restored after the exception too


@pytest.mark.slow
def test_compiled_step_is_bit_equal_to_the_eager_step():
    snn, x = snn_and_input()
    ref = {mode: simulate(snn, x, 6, mode=mode) for mode in ("s", "m")}
    with compiled_scan():
        for mode in ("s", "m"):
            assert torch.equal(simulate(snn, x, 6, mode=mode), ref[mode])
