"""Peak memory of one call, beside its time in the benchmarks.

tracemalloc cannot see torch's allocations, so:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus what was allocated before the call (``method='cuda_max_allocated'``).
- CPU (Linux): the kernel's peak resident set size. Free memory cached by
  glibc is first returned to the system (``malloc_trim``), the peak is reset
  by writing ``5`` to ``/proc/self/clear_refs``, and the result is ``VmHWM``
  after the call minus ``VmRSS`` before it (``method='rss_peak_delta'``).
  This counts every byte the call touched, including torch's temporaries
  and oneDNN's scratch space; it is a process-wide figure, so run nothing
  else in the process meanwhile.
- Elsewhere: ``None`` (``method='unavailable'``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

import torch

_PROC = "/proc/self"


def _status_kib(field: str) -> int | None:
    try:
        with open(f"{_PROC}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _reset_rss_peak() -> bool:
    try:
        with open(f"{_PROC}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[int | None, str]:
    """Run ``fn`` once; return (peak bytes above the starting point, or None, and the method used)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda_max_allocated"
    _trim()
    before = _status_kib("VmRSS")
    if before is None or not _reset_rss_peak():
        fn()
        return None, "unavailable"
    fn()
    peak = _status_kib("VmHWM")
    return (max(0, peak - before) * 1024 if peak is not None else None), "rss_peak_delta"
