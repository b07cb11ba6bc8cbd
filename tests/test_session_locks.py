"""Per-session locks: one session's turns are serialised, other sessions never wait for it."""

from __future__ import annotations

import threading

from engine.session_locks import SessionLocks


def _taken_within(locks: SessionLocks, session: str, seconds: float) -> bool:
    """Whether another thread gets ``session``'s lock within ``seconds``."""
    acquired = threading.Event()

    def take() -> None:
        with locks.hold(session):
            acquired.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return acquired.wait(timeout=seconds)


def test_another_session_is_never_blocked_by_a_held_one():
    locks = SessionLocks()
    with locks.hold("busy"):
        for i in range(5000):  # far more sessions than any stripe count
            assert _taken_within(locks, f"session-{i}", 5), f"session-{i} waited for 'busy'"


def test_the_same_session_waits_for_its_holder():
    locks = SessionLocks()
    with locks.hold("s"):
        assert not _taken_within(locks, "s", 0.2)
    assert _taken_within(locks, "s", 5)


def test_locks_are_dropped_when_nobody_holds_or_awaits_them():
    locks = SessionLocks()
    with locks.hold("a"), locks.hold("b"):
        assert len(locks) == 2
    assert len(locks) == 0
