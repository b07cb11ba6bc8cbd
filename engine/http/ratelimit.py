"""Per-key token buckets: ``rate`` tokens a second, at most ``burst`` saved up.

In-process, so with N workers a key may send up to N times its rate in total; size ``rate``
per worker. A dozen lines do not justify a dependency (and the caller needs the wait time for
``Retry-After``, which the bucket gives directly).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, name: str, rate: float, burst: int) -> float:
        """Take one token for ``name``. Returns 0 when granted, else the seconds to wait."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
