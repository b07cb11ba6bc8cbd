"""What the CPU can do, read without importing torch (the tf-idf paths never need it)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN runs bf16 matmuls natively (elsewhere they are emulated and
    slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
