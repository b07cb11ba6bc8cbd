"""Finding the worker processes of a running `salesbot serve` through /proc.

Shared by the HTTP tests and the load benchmark: both wait for, measure or kill uvicorn's
workers, which are children of `serve` started by multiprocessing's spawn.
"""

from __future__ import annotations

from pathlib import Path


def spawned_children(parent: int) -> list[int]:
    """Sorted pids of the children of ``parent`` started by multiprocessing's spawn."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)
