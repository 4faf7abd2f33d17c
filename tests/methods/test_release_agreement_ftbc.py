"""FTBC's calibration loop agrees with the release's, iteration by iteration.

The transcription below is the release's outer loop written from its algorithm
(docs/methods.md section 5): every iteration reseeds (seed + 1 + iteration here: the
thresholds' draw is seed), shuffles
the training images afresh and takes the first ``batches`` batches; every batch
runs one release-style pass (the whole network advanced one step per (layer,
step) pair, ``ftbc.bench.reference.release_ftbc_pass``). Biases accumulate over all
batches and iterations. The suite's stage must give the same biases (float64,
within 1e-9: the operations are the same but grouped differently).
"""

import copy

import pytest
import torch

from _nets import tiny_resnet, tiny_vgg
from ftbc.bench import reference as _reference
from ftbc.snn import calibration as calib
from ftbc.data.calibration_pool import CalibrationPool
from ftbc.snn.conversion import CalibrationContext, convert
from ftbc.snn.graph import spiking_layers
from ftbc.data.in_memory import TensorImageDataset
from ftbc.snn.method import Method

BASE = Method(name="agree_relu", activation="relu", threshold="max", threshold_reduce="max", channelwise=True,
              v0=0.0, shift=True, threshold_batches=1, threshold_batch_size=16)
# FTBC's three bases differ only in the neuron they calibrate: SNN Calibration's (channel-wise
# thresholds, shift theta/2T), QCFS's (v(0) = theta/2, no shift), RTS's (no shift after an addition).
BASES = {
    "snnc": BASE,
    "qcfs": BASE.with_overrides({"channelwise": False, "v0": 0.5, "shift": False}),
    "rts": BASE.with_overrides({"channelwise": False, "shift_after_add": False}),
}
ITERATIONS, BATCHES, BATCH_SIZE, ALPHA, T, SEED = 3, 2, 8, 0.5, 4, 7


def release_calibration(snn, ann, images, *, seed: int) -> dict[str, torch.Tensor]:
    """The release's loop: per iteration, reseed, reshuffle, the first BATCHES batches, one pass each."""
    snn = copy.deepcopy(snn)
    for it in range(ITERATIONS):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1 + it))
        for k in range(BATCHES):
            x = images[order[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]]
            _reference.release_ftbc_pass(snn, ann, x, T, ALPHA)
    return {name: n.bias.clone() for name, n in spiking_layers(snn)}


def suite_calibration(snn, ann, images, *, seed: int, order: str = "auto") -> dict[str, torch.Tensor]:
    snn = copy.deepcopy(snn)
    ctx = CalibrationContext(ann=ann, data=images, T=T, seed=seed)
    calib.ftbc_stage(snn, ctx, solver="heuristic", alpha=ALPHA, iterations=ITERATIONS, batches=BATCHES,
                     batch_size=BATCH_SIZE, select="last", order=order)
    return {name: n.bias.clone() for name, n in spiking_layers(snn)}


def _converted(make, base=BASE):
    torch.manual_seed(3)
    images = torch.randn(40, 3, 16, 16, dtype=torch.float64)
    res = convert(make(), base, data=images.float(), T=T)
    return res.snn.double(), res.ann.double(), images


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("order", ["layer", "step"])
@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_ftbc_stage_matches_the_release_loop_with_fresh_batches(make, order, base):
    """On each base's neuron, layer-major and step-major (memory independent of T) orders."""
    snn, ann, images = _converted(make, BASES[base])
    ours = suite_calibration(snn, ann, images, seed=SEED, order=order)
    theirs = release_calibration(snn, ann, images, seed=SEED)
    assert ours.keys() == theirs.keys() and len(ours) >= 3
    for name in ours:
        assert ours[name].abs().sum() > 0
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-9)


def test_reusing_one_set_of_batches_breaks_the_agreement(monkeypatch):
    """The perturbation the test must catch: the same batches in every iteration."""
    snn, ann, images = _converted(tiny_vgg)
    theirs = release_calibration(snn, ann, images, seed=SEED)
    monkeypatch.setattr(calib, "iteration_seed", lambda seed, iteration: seed)
    ours = suite_calibration(snn, ann, images, seed=SEED)
    assert any((ours[k] - theirs[k]).abs().max() > 1e-6 for k in ours)


def test_iterations_see_different_images():
    """With a pool, each iteration's draw is new: over 3 iterations more distinct images than one draw."""
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    pool = CalibrationPool(TensorImageDataset(images, torch.zeros(200)), "cifar10", transform_name="test")
    seen = [pool.draw(BATCHES, BATCH_SIZE, calib.iteration_seed(SEED, it)) for it in range(3)]
    flat = torch.cat([torch.cat(d) for d in seen]).flatten(1)
    distinct = torch.unique(flat, dim=0).shape[0]
    assert distinct > BATCHES * BATCH_SIZE
    assert all(torch.equal(a, b) for a, b in zip(seen[0], pool.draw(BATCHES, BATCH_SIZE, SEED + 1)))


def test_auto_order_goes_step_major_above_the_memory_budget(monkeypatch):
    snn, ann, images = _converted(tiny_vgg)
    x = images[:BATCH_SIZE]
    need = calib.layer_major_bytes(ann, x, T)
    assert need == 3 * T * BATCH_SIZE * 8 * 16 * 16 * 8  # the widest layer: 8 x 16 x 16 float64 values
    for budget, expected in ((need, "layer"), (need - 1, "step")):
        monkeypatch.setattr(calib, "LAYER_MAJOR_BUDGET", budget)
        snn_c = copy.deepcopy(snn)
        ctx = CalibrationContext(ann=ann, data=images, T=T, seed=SEED)
        calib.ftbc_stage(snn_c, ctx, solver="heuristic", alpha=ALPHA, iterations=1, batches=1,
                         batch_size=BATCH_SIZE, select="last", order="auto")
        assert {"stage": "ftbc", "order": expected} in ctx.log
