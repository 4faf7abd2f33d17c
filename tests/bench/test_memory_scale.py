"""The step-major calibration passes on an ImageNet-sized input keep memory independent of T:
FTBC's, and the rate pass of SNN Calibration's bias and potential stages.

A reduced-width ImageNet VGG-16 (configuration D, channels / 8, 224 x 224, the
7 x 7 x C head) is calibrated step-major; the process's peak resident memory
during the pass must stay under the budget formula

    4 bytes x N x (sum over spiking layers of C H W   # every layer's membrane
                   + 8 x max over layers of C H W)    # one step's transients

plus a fixed allowance for the allocator, whatever T is; the layer-major pass
would hold 3 x T x N x max C H W values at once instead. (The rate pass holds the
membranes of the layers up to the one it calibrates, and the running sums of that
layer's input and output: within the same formula.)
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftbc.bench import memory as _memory
from ftbc.snn.calibration import layer_major_bytes, rate_pass
from ftbc.snn.ftbc_solvers import stepwise_ftbc_pass
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.snn.method import Method
from ftbc.models.vgg import FEATURE_CFGS, VGG

N = 8
ALLOWANCE = 48 * 1024**2  # allocator pools, oneDNN scratch, the Python objects of a pass
METHOD = Method(name="mem_relu", activation="relu", threshold="max", threshold_reduce="max", channelwise=True,
                threshold_batches=1, threshold_batch_size=N)


def _reduced_vgg16() -> VGG:
    cfg = tuple(item if item == "A" else item // 8 for item in FEATURE_CFGS["D"])
    torch.manual_seed(0)
    return VGG(cfg, pool_size=7, hidden=(512, 512), num_classes=10).eval()


def step_major_budget(snn, x: torch.Tensor) -> int:
    sizes = []
    hooks = [n.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel())) for _, n in spiking_layers(snn)]
    try:
        snn(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return 4 * x.shape[0] * (sum(sizes) + 8 * max(sizes))


def _bias_update(name, n, r, a) -> None:
    n.offset = n.offset - (r - a).mean(dim=[0, *range(2, r.dim())])


PASSES = {
    "ftbc": lambda snn, ann, x, T: stepwise_ftbc_pass(snn, ann, x, T, 0.5),
    "rate": lambda snn, ann, x, T: rate_pass(snn, ann, x, T, _bias_update, order="step"),
}


def _measure(T: int, kind: str) -> tuple[int | None, int, int, int]:
    """(peak bytes of one step-major pass, budget, layers calibrated, bytes one more step would add
    to a layer-major pass) in this process; for FTBC, the number of bias steps filled in the layer
    with the fewest instead of the layer count."""
    torch.manual_seed(1)
    x = torch.randn(N, 3, 224, 224)
    res = convert(_reduced_vgg16(), METHOD, data=x, T=T)
    snn, ann = res.snn, res.ann
    budget = step_major_budget(snn, x)
    assert budget < 200 * 1024**2 and layer_major_bytes(ann, x, 32) > 4 * budget
    peak, _ = _memory.peak_memory(lambda: PASSES[kind](snn, ann, x, T))
    if kind == "ftbc":
        done = min(int((n.bias.abs().sum(1) > 0).sum()) for _, n in spiking_layers(snn))
    else:
        done = sum(int(n.offset.abs().sum() > 0) for _, n in spiking_layers(snn))
    return peak, budget, done, layer_major_bytes(ann, x, 1)


def _measure_in_a_fresh_process(T: int, kind: str) -> tuple[int | None, int, int, int]:
    """A process of its own: the resident-set peak of a long test session also holds what
    earlier tests left in the allocator, which is not this pass's memory."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_memory_scale as m; print(repr(m._measure({T}, {kind!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind, Ts", [("ftbc", (4, 32)), ("rate", (2, 6))])
def test_step_major_pass_fits_the_budget_at_any_T(kind, Ts):
    (p1, budget, done1, per_step), (p2, budget2, done2, _) = (_measure_in_a_fresh_process(T, kind) for T in Ts)
    if p1 is None or p2 is None:
        pytest.skip("no peak-memory probe on this system")
    layers = 15  # 13 convolutions and 2 hidden linear layers, every one calibrated
    assert budget == budget2 and (done1, done2) == (Ts if kind == "ftbc" else (layers, layers))
    assert max(p1, p2) <= budget + ALLOWANCE, (p1, p2, budget)
    # More steps, no more memory: a layer-major pass would add per_step bytes for every extra step
    # (38 MB here); the step-major peaks scatter by up to about 50 MB from run to run whatever T is
    # (fresh processes, same T), so the bound is half the layer-major growth, not a fixed margin.
    assert p2 - p1 <= (Ts[1] - Ts[0]) * per_step / 2, (p1, p2, per_step)
