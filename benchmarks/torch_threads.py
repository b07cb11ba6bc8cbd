"""torch's intra-op thread count for the benchmarks that take ``--threads``."""

from __future__ import annotations


def set_threads(count: int) -> None:
    """torch intra-op threads (0: torch's default). On cores shared with other busy processes
    one thread is often faster than two: no thread waits at every barrier for a descheduled peer."""
    if count:
        import torch

        torch.set_num_threads(count)
