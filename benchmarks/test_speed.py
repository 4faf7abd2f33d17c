"""Each candidate of ``ftbc bench`` on the issue's grid: CIFAR VGG-16 and ResNet-20, batch 64 and
128, T = 8, 32, 128, on CPU (and CUDA when present). Compare within one group (= one configuration).

Default run (~10 min on 2 cores): every ResNet-20 configuration but T = 128 at batch 128, and VGG-16
at batch 64 with T = 8 and 32. The rest is marked ``full``. The release's FTBC pass, ~20x slower
than the suite's, is timed at T = 8 only (its cost is linear in T like the suite's; ``full``: all T).
"""

from __future__ import annotations

import pytest
import torch

from conftest import devices
from ftbc.interop import export_spikingjelly as _spikingjelly
from ftbc.bench.memory import peak_memory
from ftbc.bench.bench import CANDIDATES, candidates
from ftbc.snn.simulation import simulate

# (arch, batch, T) run by default; every other grid point is "full".
DEFAULT = {("vgg16", 64, 8), ("vgg16", 64, 32),
           ("resnet20", 64, 8), ("resnet20", 64, 32), ("resnet20", 64, 128),
           ("resnet20", 128, 8), ("resnet20", 128, 32)}
SECONDS_PER_IMAGE_STEP = {"vgg16": 4.5e-3, "resnet20": 1.2e-3}  # 2-core CPU floor, for the round count


def grid() -> list:
    params = []
    for device in devices():
        for arch in ("vgg16", "resnet20"):
            for batch in (64, 128):
                for T in (8, 32, 128):
                    heavy = (arch, batch, T) not in DEFAULT and device == "cpu"
                    params.append(pytest.param((arch, batch, T, device), id=f"{arch}-b{batch}-T{T}-{device}",
                                               marks=[pytest.mark.full] if heavy else []))
    return params


def rounds_for(setup) -> int:
    if setup.x.device.type != "cpu":
        return 5
    est = SECONDS_PER_IMAGE_STEP["vgg16" if "vgg" in setup.model else "resnet20"] * setup.x.shape[0] * setup.T
    return 3 if est < 1.0 else (2 if est < 5.0 else 1)


@pytest.mark.parametrize("name", [c for c in CANDIDATES if c != "snn_compiled"])
@pytest.mark.parametrize("setup", grid(), indirect=True)
def test_speed(benchmark, setup, name, request):
    if name == "release_ftbc_pass" and setup.T != 8 and "full" not in (request.config.option.markexpr or ""):
        pytest.skip("the release's pass is timed at T=8 unless -m full")
    fns = getattr(setup, "fns", None) or candidates(setup)
    setup.fns = fns  # built once per configuration
    fn = fns[name]
    if fn is None:
        pytest.skip("spikingjelly is not installed")
    if name.startswith("spikingjelly") and setup.T == 8:  # check it runs the same network first
        mode = "s" if name.endswith("single") else "m"
        theirs = _spikingjelly.sj_simulate(_spikingjelly.to_spikingjelly(setup.snn, mode, setup.T, node="plain"), setup.x, setup.T)
        assert torch.equal(theirs, simulate(setup.snn, setup.x, setup.T, mode=mode))
    memory: dict[str, object] = {}

    def timed() -> None:  # the first round also reads the peak memory (no extra call)
        if memory:
            fn()
        else:
            memory["peak"], memory["method"] = peak_memory(fn, setup.x.device)

    benchmark.group = f"{setup.model} batch {setup.x.shape[0]} T {setup.T} {setup.x.device.type}"
    benchmark.pedantic(timed, rounds=1 if name == "release_ftbc_pass" else rounds_for(setup),
                       iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(candidate=name, model=setup.model, batch=setup.x.shape[0], T=setup.T,
                                device=str(setup.x.device), peak_mem_bytes=memory["peak"],
                                memory_method=memory["method"])
