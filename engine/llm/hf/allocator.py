"""Pin glibc's mmap threshold so the process's memory follows what torch holds.

Measured (``tests/test_capacity.py``, SmolLM2 fp32, 8 sessions x 512 cached tokens, 2-core AMD
EPYC): with glibc's defaults the serving peak was 818 MiB above the baseline (944 MB on another
machine of the same kind) against 731 MiB that torch really holds; with the mmap threshold pinned
it was 729 MiB. The difference is allocator slack, not tensors: glibc serves allocations above
``M_MMAP_THRESHOLD`` (128 KiB) with their own mmap, returned to the OS on free, but the first
such free raises the threshold dynamically (up to 32 MiB). From then on the KV tensors (~400 KB
per layer and session here) and the transient activations come from the heap arenas, where the
freed transients between long-lived KV tensors cannot be handed back: ~10 MB per cached session
here, more with more threads (one arena per thread). Setting the threshold explicitly turns the
dynamic adjustment off (``mallopt(3)``), so large tensors are always mmapped and freed memory goes
back to the OS: resident memory then is what :mod:`engine.llm.hf.capacity` estimates.

Process-wide, so it is done once when the in-process LLM is set up; a no-op where the C library
is not glibc. ``SALESBOT_MALLOC_PIN=0`` leaves the allocator alone (the environment variable
``MALLOC_MMAP_THRESHOLD_`` has the same effect as the call when set before start).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 128 * 1024  # glibc's own initial value, kept fixed

_pinned = False


def pin_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True if the call took effect."""
    global _pinned
    if _pinned:
        return True
    if os.environ.get("SALESBOT_MALLOC_PIN", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        _pinned = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        return False
    return _pinned
