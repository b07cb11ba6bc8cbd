"""One lock per session in use, so one process never computes the same session's turn twice.

A turn holds its session's lock while the LLM drafts (seconds on a CPU). Striped locks (a fixed
array indexed by a hash) made unrelated sessions that shared a stripe wait for each other's
drafts: with 64 conversations in flight and 1,024 stripes about two pairs collide at any time,
which added a whole draft to live turns and deadlocked the simulation's batching rounds (a
turn waiting for the stripe while its holder waited for the round). Here each session gets its
own lock, created on first use and dropped when no thread holds or waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SessionLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}  # lock, [users]

    @contextmanager
    def hold(self, session_id: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(session_id, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[session_id]

    def __len__(self) -> int:
        """Sessions whose lock is held or awaited now."""
        with self._guard:
            return len(self._locks)
