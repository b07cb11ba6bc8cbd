"""Memory measurement in a fresh process, shared by the serving (:mod:`capacity`) and training
(:mod:`train_capacity`) estimates.

Why a fresh process and RSS: torch's CPU allocator keeps no statistics and tracemalloc does not
see tensor memory, so the honest number is what the OS charges a process that has nothing else
allocated. The measuring scripts import :func:`status` and :func:`reset_peak` from here; the
parent runs them with :func:`run_script`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from engine.errors import SalesbotError


def status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Reset the peak (``VmHWM``) to the resident size now, so it counts from here."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def run_script(
    script: str, args: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Run ``script`` in a fresh interpreter with ``args``; the JSON object of its last line.

    ``env`` adds to (does not replace) this process's environment."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise SalesbotError(f"measurement failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
