"""Keep freed memory in the process instead of handing it back to the OS on every free.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh
``mmap`` pages and unmaps them on free, and trims the heap top above 128 KB;
the next allocation of the same size page-faults every page back in. The SNN
simulation and training allocate and free tensors of the same sizes at every
step, so on CPU that churn cost about a third of a run's CPU time in system
time (docs/training.md, "Allocator"). Turning off ``mmap`` for large blocks and
raising the trim threshold lets the freed blocks be reused in place.

Applied by the ``ftbc`` command and the test session; ``FTBC_MALLOC=system``
leaves glibc's defaults. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap top before returning it


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (no ``mmap`` for large ones, trim above 1 GiB).

    Returns whether the setting took effect. Allocations a worker thread's arena cannot
    hold fall back to the main heap, as glibc does when its ``mmap`` budget is spent.
    """
    if os.environ.get("FTBC_MALLOC") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
