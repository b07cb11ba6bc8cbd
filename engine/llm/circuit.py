"""A circuit breaker: stop calling a server that keeps failing, try again after a pause.

Without it, every turn during an outage of the LLM server waits for its full deadline (timeouts
and retries) before the fallback is sent; with it, after ``failures`` failed calls in a row the
next calls fail at once (the customer hears the fallback immediately), and after ``reset_s`` one
trial call is let through (half-open): success closes the circuit, failure opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """closed | open | half-open"""
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at < self.reset_s:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial call is allowed."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "open" or self._trial:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or self._failures >= self.threshold:
                self._opened_at = self.clock()
            self._trial = False

    def retry_in(self) -> float:
        """Seconds until a trial call is allowed (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_s - (self.clock() - self._opened_at))
