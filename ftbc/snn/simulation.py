"""Running a converted SNN for T steps: one call, two exact execution orders.

Shapes: input images x [N, C, H, W] (direct coding: the same analog image is
the input current of every step); :func:`simulate` returns per-step outputs
[T, N, K]. The prediction after t steps is argmax of the logits summed over
steps 1..t, so one run to T_max gives the accuracy at every t <= T_max.

Execution orders (same numbers up to floating-point summation order):

- ``'s'`` step-major: the whole network for step t, then t+1. The working set
  of a moderate batch stays in cache, which on CPU ran closest to T ANN passes.
- ``'m'`` layer-major: every stateless layer runs once on [T*N, ...] and each
  IF neuron scans over T. Fewer, larger kernels: the GPU's friend.

The simulator owns state: every neuron is reset at the start of each chunk.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from ftbc.snn.monitors import unobserved
from ftbc.snn.neuron import neurons

StepMode = Literal["s", "m", "auto"]

# Layer-major memory bound: at most this many samples (T x chunk) per stateless-layer call,
# and at most this many bytes of one layer's activations (off CUDA; on CUDA half the free memory).
LAYER_MAJOR_SAMPLES = 4096
LAYER_MAJOR_BUDGET = 2 * 1024**3
STEP_MAJOR_CHUNK = 256


def set_step_mode(model: nn.Module, mode: str, T: int = 1) -> None:
    for _, n in neurons(model):
        n.step_mode = mode
        n.n_steps = T


def reset_net(model: nn.Module) -> None:
    for _, n in neurons(model):
        n.reset()


def default_mode(device: torch.device | str, batch: int, T: int) -> str:
    """Layer-major on accelerators (launch-bound otherwise), step-major on CPU."""
    return "m" if torch.device(device).type != "cpu" else "s"


def default_chunk(mode: str, T: int) -> int:
    return STEP_MAJOR_CHUNK if mode == "s" else max(1, LAYER_MAJOR_SAMPLES // T)


@torch.no_grad()
def widest_layer(snn: nn.Module, x: Tensor) -> int:
    """Values per image of the largest spiking layer's output, from one step of one image."""
    sizes: list[int] = []
    hooks = [n.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel())) for _, n in neurons(snn)]
    set_step_mode(snn, "s")
    reset_net(snn)
    try:
        with unobserved():  # a probe, not a simulated step: spike monitors must not count it
            snn(x[:1])
    finally:
        for h in hooks:
            h.remove()
        reset_net(snn)
    return max(sizes, default=1)


def memory_budget(device: torch.device | str) -> int:
    """Bytes one layer's activations over all steps may take: half the free memory of a CUDA
    device, :data:`LAYER_MAJOR_BUDGET` elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return LAYER_MAJOR_BUDGET


def layer_major_chunk(snn: nn.Module, x: Tensor, T: int) -> int:
    """Images per layer-major chunk: at most ``LAYER_MAJOR_SAMPLES // T``, and few enough that
    the widest layer's input, current and output over T x chunk samples fit :func:`memory_budget`."""
    budget = memory_budget(x.device)
    per_image = 3 * T * widest_layer(snn, x) * max(x.element_size(), 4)
    return max(1, min(default_chunk("m", T), budget // per_image))


def _check_input(snn: nn.Module, x: Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"expected input [N, C, H, W] (or [N, features]); got shape {tuple(x.shape)}")
    if not neurons(snn):
        raise ValueError("the model has no IF neurons: convert it first (ftbc.snn.conversion.convert)")


@torch.no_grad()
def simulate(snn: nn.Module, x: Tensor, T: int, *, mode: StepMode = "auto", chunk_size: int | None = None) -> Tensor:
    """Simulate ``snn`` for ``T`` steps on images ``x`` [N, ...]; returns outputs [T, N, K].

    The batch is processed in chunks (``chunk_size`` images; by default bounded so
    memory stays flat for any T: :data:`STEP_MAJOR_CHUNK` images step-major,
    :func:`layer_major_chunk` layer-major) and every neuron is reset before each chunk.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    _check_input(snn, x)
    if mode == "auto":
        mode = default_mode(x.device, x.shape[0], T)
    if mode not in ("s", "m"):
        raise ValueError(f"mode must be 's', 'm' or 'auto', got {mode!r}")
    chunk = chunk_size or (layer_major_chunk(snn, x, T) if mode == "m" else default_chunk(mode, T))
    outs = [_simulate_chunk(snn, xc, T, mode) for xc in x.split(chunk)]
    return torch.cat(outs, dim=1)


def _simulate_chunk(snn: nn.Module, x: Tensor, T: int, mode: str) -> Tensor:
    set_step_mode(snn, mode, T)
    reset_net(snn)
    try:
        if mode == "m":
            n = x.shape[0]
            xr = x.unsqueeze(0).expand(T, *x.shape).reshape(T * n, *x.shape[1:])
            out = snn(xr)
            return out.view(T, n, *out.shape[1:])
        return torch.stack([snn(x) for _ in range(T)])
    finally:
        reset_net(snn)
        set_step_mode(snn, "s")


def correct_per_step(outputs: Tensor, labels: Tensor) -> Tensor:
    """Number of correct predictions after t = 1..T steps from per-step outputs [T, N, K]."""
    pred = outputs.cumsum(0).argmax(-1)
    return (pred == labels.to(pred.device)).sum(1).cpu()


class NoData(ValueError):
    """:func:`accuracy_per_step` was given no images (a ValueError, as before; the CLI turns it into a UserError)."""


# Called after each batch with (images so far, correct predictions so far at t = 1..T [T]).
BatchCallback = Callable[[int, Tensor], None]


@torch.no_grad()
def accuracy_per_step(
    snn: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    T: int,
    *,
    device: torch.device | str = "cpu",
    mode: StepMode = "auto",
    chunk_size: int | None = None,
    progress: bool = False,
    on_batch: BatchCallback | None = None,
) -> Tensor:
    """Top-1 accuracy (%) at every t = 1..T over ``batches`` of (images, labels); shape [T].

    The one evaluation loop: calibration checks and ``ftbc evaluate`` both run it; what they
    observe besides accuracy comes from hooks (:class:`ftbc.snn.monitors.SpikeMonitor`) and
    ``on_batch`` (progress lines). Raises :class:`NoData` when ``batches`` holds no image.
    """
    correct = torch.zeros(T, dtype=torch.long)
    total = 0
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=f"SNN T={T}", leave=False, disable=not sys.stderr.isatty())
    for x, y in it:
        out = simulate(snn, x.to(device), T, mode=mode, chunk_size=chunk_size)
        correct += correct_per_step(out, y)
        total += len(y)
        if on_batch is not None:
            on_batch(total, correct)
    if total == 0:
        raise NoData("no data to evaluate")
    return correct.double() * 100.0 / total
