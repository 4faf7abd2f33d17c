"""``evaluate_snn``: its activity table against spikes counted by hand, and its empty-input error."""

import pytest
import torch

from _nets import tiny_vgg
from ftbc.errors import UserError
from ftbc.run.evaluation import evaluate_snn
from ftbc.snn.conversion import convert
from ftbc.snn.method import Method
from ftbc.snn.simulation import accuracy_per_step, correct_per_step, simulate

T = 4


@pytest.fixture(scope="module")
def snn_and_data():
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 16, 16) * 2, torch.randint(0, 5, (10,))
    snn = convert(tiny_vgg(), Method(name="m", activation="relu", threshold="max"), data=x, T=T).snn
    return snn, x, y


def test_activity_equals_spikes_counted_by_hand(snn_and_data):
    """tiny_vgg: neurons '2' (8x16x16, feeds conv 8->12 3x3), '6' (12x8x8, feeds a pool, flatten and
    Linear(192, 16)) and '10' (16, feeds Linear(16, 5)); spikes summed over both batches."""
    snn, x, y = snn_and_data
    outs: dict[str, list[torch.Tensor]] = {"2": [], "6": [], "10": []}
    hooks = [snn.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs[n].append(o.clone()))
             for n in outs]
    try:
        logits = torch.cat([simulate(snn, xb, T, mode="s") for xb in (x[:6], x[6:])], dim=1)
    finally:
        for h in hooks:
            h.remove()
    acc, activity = evaluate_snn(snn, [(x[:6], y[:6]), (x[6:], y[6:])], T, mode="s")
    assert torch.equal(acc, correct_per_step(logits, y).double() * 100.0 / 10)
    size, fan = {"2": 8 * 16 * 16, "6": 12 * 8 * 8, "10": 16}, {"2": 12 * 9.0, "6": 16.0, "10": 5.0}
    assert list(activity.columns) == ["layer", "t", "firing_rate", "spikes_per_image", "synops_per_image"]
    assert list(zip(activity.layer, activity.t)) == [(n, t) for n in outs for t in range(1, T + 1)]
    for row in activity.itertuples():
        calls = outs[row.layer][row.t - 1::T]  # step t of each batch (2 batches x T calls, step-major)
        spikes = float(sum(int(o.count_nonzero()) for o in calls)) / 10
        assert row.spikes_per_image == spikes
        assert row.firing_rate == spikes / size[row.layer]
        assert row.synops_per_image == spikes * fan[row.layer]
    assert activity.spikes_per_image.sum() > 0  # the check is not empty


def test_no_images_is_a_user_error_here_and_a_value_error_below(snn_and_data):
    snn = snn_and_data[0]
    with pytest.raises(UserError, match="no test images to evaluate"):
        evaluate_snn(snn, [], T)
    with pytest.raises(ValueError, match="no data to evaluate"):
        accuracy_per_step(snn, [], T)


def test_layer_major_activity_equals_step_major(snn_and_data):
    """The layer-major chunk-size probe (one image, one step) is not a simulated step: both modes
    simulate the same spikes, so their activity tables are equal (the probe once added to t=1)."""
    snn, x, y = snn_and_data
    acc_s, act_s = evaluate_snn(snn, [(x, y)], T, mode="s")
    acc_m, act_m = evaluate_snn(snn, [(x, y)], T, mode="m")
    assert torch.equal(acc_s, acc_m)
    assert act_s.equals(act_m)
