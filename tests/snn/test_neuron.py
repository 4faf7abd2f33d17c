"""The IF neuron against spike trains worked out by hand."""

import pytest
import torch

from ftbc.snn.monitors import SpikeMonitor
from ftbc.snn.neuron import IFNeuron, if_step


def run_steps(n: IFNeuron, xs):
    n.reset()
    return [n(torch.tensor([[float(x)]])).item() for x in xs]


def test_if_step_fires_at_threshold_and_resets_by_subtraction():
    s, v = if_step(torch.tensor([0.5, 0.5, 0.7]), torch.tensor([0.5, 0.4, 1.0]), torch.tensor(1.0))
    assert s.tolist() == [1.0, 0.0, 1.0]  # 1.0 >= 1 fires, 0.9 does not, 1.7 fires
    assert torch.allclose(v, torch.tensor([0.0, 0.9, 0.7]))  # subtract, keep, subtract (not zero)


def test_spike_train_by_hand():
    # theta = 1, input 0.4 each step: v = .4, .8, 1.2->fire .2, .6, 1.0->fire 0, .4
    n = IFNeuron(threshold=1.0)
    assert run_steps(n, [0.4] * 6) == [0, 0, 1, 0, 1, 0]


def test_output_is_theta_times_spike():
    n = IFNeuron(threshold=2.5)
    assert run_steps(n, [3.0, 0.0]) == [2.5, 0.0]  # v = 3 -> fires, v = .5 -> silent


def test_initial_potential():
    # v0 = theta/2 = 0.5 with input 0.5: fires at step 1 (0.5+0.5 >= 1), then every other step
    n = IFNeuron(threshold=1.0, v0=0.5)
    assert run_steps(n, [0.5] * 4) == [1, 0, 1, 0]
    n0 = IFNeuron(threshold=1.0, v0=0.0)
    assert run_steps(n0, [0.5] * 4) == [0, 1, 0, 1]


def test_offset_added_every_step():
    n = IFNeuron(threshold=1.0, offset=0.25)
    # 0.25+0.25=0.5 per step: v=.5, 1.0 fire->0, .5, 1.0 fire
    assert run_steps(n, [0.25] * 4) == [0, 1, 0, 1]


def test_ftbc_bias_applies_at_its_own_step_only():
    n = IFNeuron(threshold=1.0)
    n.bias = torch.tensor([[0.0], [0.6], [0.0]])  # b[t] for t = 0, 1, 2; none after
    # input .3: v=.3; t1: .3+.3+.6=1.2 fire->.2; t2: .5; t3 (no bias row): .8; t4: 1.1 fire
    assert run_steps(n, [0.3] * 5) == [0, 1, 0, 0, 1]


def test_per_channel_threshold_and_bias_broadcast_over_space():
    n = IFNeuron(threshold=torch.tensor([1.0, 2.0]))
    n.bias = torch.tensor([[0.0, 1.5]])
    x = torch.full((1, 2, 2, 2), 0.6)
    out = n(x)
    assert torch.equal(out[0, 0], torch.zeros(2, 2))  # 0.6 < 1
    assert torch.equal(out[0, 1], torch.full((2, 2), 2.0))  # 0.6 + 1.5 >= 2, output theta=2


def test_multi_step_equals_single_steps_and_the_monitor_counts_spikes():
    torch.manual_seed(0)
    T, N = 7, 3
    xs = torch.randn(T, N, 4, 5, 5)
    n = IFNeuron(threshold=torch.rand(4) + 0.5, v0=0.3, offset=torch.rand(4) * 0.1)
    n.bias = torch.randn(5, 4) * 0.1
    single = torch.stack([n(xs[t]) for t in range(T)])
    n.reset()
    n.step_mode, n.n_steps = "m", T
    with SpikeMonitor(n) as m:
        multi = n(xs.reshape(T * N, 4, 5, 5)).view_as(xs)
    assert torch.equal(single, multi)
    assert m.counts("", T).tolist() == (multi > 0).flatten(1).sum(1).double().tolist()


@pytest.mark.parametrize("mode", ["s", "m"])
def test_monitor_counts_equal_the_spikes_of_run_steps(mode):
    """Counts per step, summed over two runs, equal those counted by hand from ``run_steps``; size per image."""
    torch.manual_seed(1)
    T, N = 5, 2
    n = IFNeuron(threshold=torch.tensor([0.5, 1.0, 1.5]), v0=0.2)
    n.bias = torch.tensor([[0.1, -0.2, 0.3]])
    runs = [torch.rand(T, N, 3, 2, 2) * 2 - 0.5 for _ in range(2)]
    by_hand = sum((n.run_steps(xs) != 0).flatten(1).sum(1).double() for xs in runs)
    assert 0 < by_hand.sum() < T * N * 12 * 2  # some spikes, not all: the check is not empty
    with SpikeMonitor(n) as m:
        for xs in runs:
            n.reset()
            if mode == "m":
                n.step_mode, n.n_steps = "m", T
                n(xs.reshape(T * N, 3, 2, 2))
            else:
                for t in range(T):
                    n(xs[t])
    n.reset()
    n.step_mode = "s"
    n(runs[0][0])  # closed: not counted
    assert torch.equal(m.counts("", T), by_hand)
    assert m.counts("", T).dtype == torch.float64
    assert m.sizes == {"": 12}
    assert m.counts("", T + 2)[T:].tolist() == [0.0, 0.0]


def test_the_neuron_keeps_no_recording_state():
    n = IFNeuron()
    for name in ("record", "spike_counts", "_count"):
        assert not hasattr(n, name), name


def test_state_dict_round_trip_with_changed_shapes():
    a = IFNeuron(threshold=torch.tensor([1.0, 2.0]), v0=torch.ones(2, 3, 3))
    a.bias = torch.ones(4, 2)
    b = IFNeuron()
    b.load_state_dict(a.state_dict())
    for k in ("threshold", "v0", "offset", "bias"):
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_in_place_step_is_bit_equal_to_the_pure_step():
    from ftbc.snn.neuron import if_step_

    torch.manual_seed(0)
    theta = torch.rand(5, 1, 1) + 0.2
    v = torch.randn(8, 5, 3, 3)
    for _ in range(20):
        x = torch.randn(8, 5, 3, 3)
        s, v_pure = if_step(x, v, theta)
        v_inplace = v.clone()
        out = if_step_(v_inplace, x, theta)
        assert torch.equal(out, s * theta)
        assert torch.equal(v_inplace, v_pure)
        v = v_pure
