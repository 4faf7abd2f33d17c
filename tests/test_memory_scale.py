"""FTBC's step-major pass on an ImageNet-sized input keeps memory independent of T.

A reduced-width ImageNet VGG-16 (configuration D, channels / 8, 224 x 224, the
7 x 7 x C head) is calibrated step-major; the process's peak resident memory
during the pass must stay under the budget formula

    4 bytes x N x (sum over spiking layers of C H W   # every layer's membrane
                   + 8 x max over layers of C H W)    # one step's transients

plus a fixed allowance for the allocator, whatever T is; the layer-major pass
would hold 3 x T x N x max C H W values at once instead.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftbc import _memory
from ftbc.calibration import layer_major_bytes, stepwise_ftbc_pass
from ftbc.conversion import convert, spiking_layers
from ftbc.method import Method
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


def _measure(T: int) -> tuple[int | None, int, int]:
    """(peak bytes of one step-major pass, budget, bias steps filled) in this process."""
    torch.manual_seed(1)
    x = torch.randn(N, 3, 224, 224)
    res = convert(_reduced_vgg16(), METHOD, data=x, T=T)
    snn, ann = res.snn, res.ann
    budget = step_major_budget(snn, x)
    assert budget < 200 * 1024**2 and layer_major_bytes(ann, x, 32) > 4 * budget
    peak, _ = _memory.peak_memory(lambda: stepwise_ftbc_pass(snn, ann, x, T, 0.5))
    filled = min(int((n.bias.abs().sum(1) > 0).sum()) for _, n in spiking_layers(snn))
    return peak, budget, filled


def _measure_in_a_fresh_process(T: int) -> tuple[int | None, int, int]:
    """A process of its own: the resident-set peak of a long test session also holds what
    earlier tests left in the allocator, which is not this pass's memory."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_memory_scale as m; print(repr(m._measure({T})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_step_major_ftbc_pass_fits_the_budget_at_any_T():
    (p4, budget, filled4), (p32, budget32, filled32) = (_measure_in_a_fresh_process(T) for T in (4, 32))
    if p4 is None or p32 is None:
        pytest.skip("no peak-memory probe on this system")
    assert budget == budget32 and (filled4, filled32) == (4, 32)  # every step of every layer calibrated
    assert max(p4, p32) <= budget + ALLOWANCE, (p4, p32, budget)
    assert p32 <= p4 + 16 * 1024**2, (p4, p32)  # eight times the steps, no more memory
