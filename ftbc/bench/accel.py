"""The accelerator path of the simulation: faster stateless layers, exact IF scan.

On a GPU the step loop is bound by kernel launches and the convolutions by
tensor-core throughput, so :func:`fast_simulate` runs the layer-major order
('m') with:

- ``precision``: ``'bf16'`` (autocast for convolutions and linear layers),
  ``'tf32'`` (tensor-float-32 matmuls and convolutions) or ``'fp32'``
  (TF32 off). The IF neurons always integrate in float32
  (:func:`ftbc.snn.neuron.exact` upcasts their input), so only the stateless
  layers round differently; spikes can therefore differ from an fp32 run.
- ``channels_last`` weights and input (NHWC convolutions on tensor cores);
- ``compile_scan``: the IF step as one fused kernel via ``torch.compile``
  inside :func:`compiled_scan` (bit-equal to :func:`ftbc.snn.neuron.if_step_`;
  off by default, it compiles for ~20-60 s on first use);
- chunks sized to free device memory (:func:`auto_chunk`), halved and retried
  on an out-of-memory error.

On CPU every option is accepted but the defaults leave :func:`simulate`
unchanged: step-major order, fp32, default chunk. Only APIs present in torch
2.4 are used.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn

from ftbc.snn.neuron import step_backend
from ftbc.snn.simulation import StepMode, default_chunk, default_mode, simulate

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision(device: torch.device | str, mode: str) -> Iterator[None]:
    """Numerical mode of the stateless layers inside the block (restored on exit)."""
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {mode!r}")
    dev = torch.device(device)
    if dev.type != "cuda":
        if mode == "bf16":
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                yield
        else:
            yield  # TF32 is a CUDA notion
        return
    saved = _set_tf32(mode == "tf32")
    try:
        if mode == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        if saved is not None:
            torch.set_float32_matmul_precision(saved[0])
            torch.backends.cudnn.allow_tf32 = saved[1]


def _set_tf32(on: bool) -> tuple[str, bool] | None:
    """Switch TF32 for matmuls and cuDNN through the long-standing flags; returns the old values.

    Recent torch refuses to mix these flags with its newer ``fp32_precision``
    settings; if the caller uses those, leave TF32 as the caller set it.
    """
    try:
        saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("high" if on else "highest")
        torch.backends.cudnn.allow_tf32 = on
        return saved
    except RuntimeError:
        return None


def to_channels_last(snn: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """4-d weights and the image batch in NHWC memory format (a no-op for other ranks)."""
    snn = snn.to(memory_format=torch.channels_last)
    return snn, (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def _fused_step(v: Tensor, x: Tensor, theta: Tensor, out: Tensor | None = None) -> Tensor:
    """:func:`ftbc.snn.neuron.if_step_` written for the compiler: one read of v and x, one write of v and out."""
    m = v + x
    o = torch.where(m >= theta, theta, torch.zeros_like(theta))
    v.copy_(m - o)
    if out is None:
        return o
    return out.copy_(o)


@functools.lru_cache(maxsize=1)
def compiled_step() -> Callable[..., Tensor]:
    """The IF step compiled once per process (shapes marked dynamic: one kernel for every layer)."""
    return torch.compile(_fused_step, dynamic=True)


def compiled_scan() -> ContextManager[None]:
    """Inside the block every neuron runs the compiled step (:func:`ftbc.snn.neuron.step_backend`)."""
    return step_backend(compiled_step())


def auto_chunk(snn: nn.Module, x: Tensor, T: int, mode: str, *, fraction: float = 0.5, probe: int = 4) -> int:
    """Images per chunk so one chunk uses about ``fraction`` of the free device memory.

    CUDA: simulate ``probe`` images, read the peak allocation, scale to the free
    memory. Elsewhere: the simulator's default chunk.
    """
    if x.device.type != "cuda":
        return default_chunk(mode, T)
    n = min(probe, x.shape[0])
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    simulate(snn, x[:n], T, mode=mode, chunk_size=n)
    per_image = max(1, (torch.cuda.max_memory_allocated(x.device) - base) // n)
    free, _ = torch.cuda.mem_get_info(x.device)
    return int(max(1, min(x.shape[0], fraction * free // per_image)))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


@torch.no_grad()
def fast_simulate(snn: nn.Module, x: Tensor, T: int, *, mode: StepMode = "auto", precision_mode: str | None = None,
                  chunk_size: int | None = None) -> Tensor:
    """:func:`ftbc.snn.simulation.simulate` under ``precision_mode`` with memory-sized chunks; outputs [T, N, K] float32.

    ``precision_mode`` defaults to ``'bf16'`` on CUDA and ``'fp32'`` elsewhere.
    Move ``snn`` and ``x`` to the device (and to channels-last) first.
    """
    if mode == "auto":
        mode = default_mode(x.device, x.shape[0], T)
    precision_mode = precision_mode or ("bf16" if x.device.type == "cuda" else "fp32")
    with precision(x.device, precision_mode):
        chunk = chunk_size or auto_chunk(snn, x, T, mode)
        while True:
            try:
                return simulate(snn, x, T, mode=mode, chunk_size=chunk).float()
            except RuntimeError as e:  # OutOfMemoryError is a RuntimeError
                if x.device.type != "cuda" or not _is_oom(e) or chunk == 1:
                    raise
                torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)

