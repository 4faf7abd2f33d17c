"""FTBC calibration: the update rule by hand, error reduction in every layer, the quantile solver."""

import pytest
import torch
from torch import nn

from _nets import tiny_resnet, tiny_vgg
from ftbc.snn.calibration import ann_targets, layerwise_pass
from ftbc.snn.ftbc_solvers import channel_mean, ftbc_heuristic_update, ftbc_quantile_update, quantile_bias
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.snn.method import Method, Stage
from ftbc.snn.neuron import IFNeuron

T = 6


def method(**ftbc):
    params = dict(alpha=0.5, iterations=3, batches=2, batch_size=32)
    params.update(ftbc)
    return Method(name="t_ftbc", activation="relu", threshold="max", threshold_reduce="ema",
                  channelwise=True, v0=0.0, threshold_batches=2, threshold_batch_size=32,
                  stages=(Stage("ftbc", params),))


def step_errors(snn, ann, x, T):
    """|per-step, per-channel mean(a - o_t)| for every spiking layer, averaged over t and c."""
    targets = ann_targets(ann, x)
    errs = {}

    def probe(name, n, xs, a):
        o = n.scan(xs) * n.theta(xs.dim() - 1)
        errs[name] = torch.stack([(channel_mean(a) - channel_mean(o[t])).abs() for t in range(T)]).mean().item()

    layerwise_pass(snn, ann, x, T, probe)
    assert set(errs) == set(targets)
    return errs


def test_heuristic_update_by_hand():
    # one neuron, one channel, two positions; theta 1, alpha 0.5, target mean 0.5
    n = IFNeuron(threshold=1.0)
    xs = torch.tensor([[[0.2], [0.2]], [[0.2], [0.2]]])  # [T=2, N=2, C=1]
    target = torch.full((2, 1), 0.5)
    ftbc_heuristic_update(n, xs, target, alpha=0.5)
    # t0: m=.2, no spike, e=.5 -> b0=.25; redo: m=.45 silent, v=.45
    # t1: m=.45+.2=.65 silent, e=.5 -> b1=.25; redo: m=.9, silent
    torch.testing.assert_close(n.bias, torch.tensor([[0.25], [0.25]]))
    ftbc_heuristic_update(n, xs, target, alpha=0.5)
    # biases accumulate: t0: m=.45 silent, e=.5 -> b0=.5, redo m=.7 silent v=.7
    # t1: m=.7+.2+.25=1.15 fires: o=1, e=.5-1=-.5 -> b1=0.0; redo m=.9 silent
    torch.testing.assert_close(n.bias, torch.tensor([[0.5], [0.0]]))


def test_heuristic_redo_makes_next_step_start_from_corrected_membrane():
    n = IFNeuron(threshold=1.0)
    xs = torch.tensor([[[0.0]], [[0.6]]])  # T=2, N=1, C=1
    target = torch.ones(1, 1)
    ftbc_heuristic_update(n, xs, target, alpha=1.0)
    # t0: silent, e=1 -> b0=1; redo: m=1 fires, v=0. t1: m=.6 silent, e=1 -> b1=1
    # without the redo, t1 would start from v=0 too but t0 would not have fired: check b0 and b1
    torch.testing.assert_close(n.bias, torch.tensor([[1.0], [1.0]]))
    out = n.scan(xs)
    assert out.flatten().tolist() == [1.0, 1.0]


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_ftbc_lowers_step_error_in_every_layer(make):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    base = convert(make(), method(iterations=1).with_overrides({"stages": ()}), data=x, T=T)
    before = step_errors(base.snn, base.ann, x, T)
    cal = convert(make(), method(), data=x, T=T)
    after = step_errors(cal.snn, cal.ann, x, T)
    for k in before:
        assert after[k] < before[k], (k, before[k], after[k])
    # the biases are buffers: they travel in the state dict
    assert any(k.endswith(".bias") and v.dim() == 2 and v.shape[0] == T for k, v in cal.snn.state_dict().items())


def test_calibration_changes_only_the_ftbc_biases():
    x = torch.randn(32, 3, 16, 16)
    plain = convert(tiny_vgg(), method().with_overrides({"stages": ()}), data=x, T=T).snn
    cal = convert(tiny_vgg(), method(iterations=1, batches=1), data=x, T=T).snn
    ftbc_keys = {f"{name}.bias" for name, _ in spiking_layers(cal)}
    after = cal.state_dict()
    for k, v in plain.state_dict().items():
        if k not in ftbc_keys:
            torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert all(after[k].abs().sum() > 0 for k in ftbc_keys)


# -- the quantile solver (closed-form FTBC) ---------------------------------------------

def single_layer(C=4, N=50, HW=3, seed=0):
    torch.manual_seed(seed)
    xs = torch.randn(T, N, C, HW, HW) * 0.6 + 0.2
    target = torch.rand(N, C, HW, HW) * torch.tensor([0.1, 0.4, 0.8, 1.5]).view(1, C, 1, 1)
    n = IFNeuron(threshold=torch.tensor([1.0, 0.8, 1.2, 1.0]))
    return n, xs, target


def test_quantile_firing_fraction_hits_target_per_step_and_channel():
    n, xs, target = single_layer()
    ftbc_quantile_update(n, xs, target)
    spikes = n.scan(xs)  # [T, N, C, H, W]
    M = xs.shape[1] * xs.shape[3] * xs.shape[4]
    p = (channel_mean(target) / n.threshold).clamp(0, 1)
    want = torch.round(p * M)
    fired = spikes.transpose(1, 2).reshape(T, 4, -1).sum(-1)
    assert (fired - want).abs().max().item() <= 1, (fired, want)
    # the over-target channel (mean 0.75 > theta 1.0? no: 1.5/2 = .75 < 1) and a saturated one
    n2 = IFNeuron(threshold=0.5)
    ftbc_quantile_update(n2, xs[:, :, :1], torch.ones(50, 1, 3, 3))
    assert n2.scan(xs[:, :, :1]).mean().item() == 1.0  # p = clip(1/0.5) = 1: all fire


def test_quantile_independent_of_batch_order_and_repeatable():
    n, xs, target = single_layer()
    ftbc_quantile_update(n, xs, target)
    b1 = n.bias.clone()
    ftbc_quantile_update(n, xs, target)  # calibrating twice gives the same biases
    torch.testing.assert_close(n.bias, b1, rtol=0, atol=0)
    perm = torch.randperm(xs.shape[1])
    n_perm = IFNeuron(threshold=n.threshold.clone())
    ftbc_quantile_update(n_perm, xs[:, perm], target[perm])
    torch.testing.assert_close(n_perm.bias, b1, rtol=0, atol=0)


def test_quantile_bias_with_ties_picks_nearest_count():
    m = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    theta = torch.tensor([1.0])
    # want 2 of 5 to fire: either 1 (only the 3) or 4 (3 and the tied 2s) -> 1 is nearer
    b = quantile_bias(m, torch.tensor([0.4]), theta)
    assert ((m + b) >= theta).sum().item() == 1
    # want 3 of 5: 1 or 4 -> 4 is nearer
    b = quantile_bias(m, torch.tensor([0.6]), theta)
    assert ((m + b) >= theta).sum().item() == 4
    assert ((m + quantile_bias(m, torch.tensor([0.0]), theta)) >= theta).sum().item() == 0
    assert ((m + quantile_bias(m, torch.tensor([1.0]), theta)) >= theta).sum().item() == 5


def test_quantile_stage_end_to_end_lowers_error():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    base = convert(tiny_resnet(), method().with_overrides({"stages": ()}), data=x, T=T)
    cal = convert(tiny_resnet(), method(solver="quantile", batches=2, batch_size=32), data=x, T=T)
    before, after = step_errors(base.snn, base.ann, x, T), step_errors(cal.snn, cal.ann, x, T)
    for k in before:
        assert after[k] < before[k], (k, before[k], after[k])


def test_bad_stage_parameters_are_rejected():
    x = torch.randn(8, 3, 16, 16)
    with pytest.raises(ValueError, match="no parameter"):
        convert(tiny_vgg(), method(nonsense=1), data=x, T=2)
    with pytest.raises(ValueError, match="solver"):
        convert(tiny_vgg(), method(solver="magic"), data=x, T=2)


def test_long_runs_log_a_line_per_stage_ftbc_iteration_and_T(caplog):
    """What ``tail -f`` on a job's log shows (the CLI sends these records to stdout)."""
    from ftbc.run.evaluation import run

    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    with caplog.at_level("INFO", logger="ftbc"):
        run(model=tiny_vgg(), meta={"act": "relu", "arch": "tiny", "dataset": "toy"}, method=method(iterations=2),
            Ts=[2], calib_data=x, test_batches=[(x, y)], ann_accuracy=0.0)
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "FTBC iteration" in line] == ["T=2: FTBC iteration 1/2",
                                                                      "T=2: FTBC iteration 2/2"]
    assert any(line.startswith("T=2: stage ftbc done in ") for line in lines)
    last = lines[-1]
    assert last.startswith("t_ftbc T=2: converted and calibrated in ") and "accuracy t=2: " in last


def test_a_long_simulation_logs_how_far_it_is(caplog, monkeypatch):
    """A T-free job simulates the whole test set in one go: it still logs its progress."""
    import ftbc.run.evaluation as evaluation

    torch.manual_seed(0)
    x, y = torch.randn(12, 3, 16, 16), torch.randint(0, 10, (12,))
    snn = convert(tiny_vgg(), Method(name="m", activation="relu", threshold="max"), data=x, T=3).snn
    monkeypatch.setattr(evaluation, "PROGRESS_EVERY_S", 0.0)
    class Batches(list):
        n_images = 12

    with caplog.at_level("INFO", logger="ftbc"):
        acc, _ = evaluation.evaluate_snn(snn, Batches([(x[:8], y[:8]), (x[8:], y[8:])]), 3)
    lines = [r.getMessage() for r in caplog.records if "test images simulated" in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == ["T=3: 8/12 test images simulated",
                                                      "T=3: 12/12 test images simulated"]
    assert lines[-1].endswith(f"accuracy at t=3 so far {float(acc[2]):.2f} %")
