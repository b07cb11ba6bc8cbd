"""The simulation's round batcher: a batch is sent when every member waits, in session order."""

from __future__ import annotations

import threading
import time

import pytest

from engine.flow.generation import GenerationParams
from engine.llm.base import BackendError, BatchItem, Generation, LLMBackend
from engine.simulation.batching import (
    SIMULATION_DEADLINE_S,
    BatchOnly,
    RoundBatcher,
    simulation_backend,
)
from tests.fakes import FakeBackend

PARAMS = GenerationParams(max_new_tokens=8)
MESSAGES = [{"role": "user", "content": "hello"}]


class Recording(LLMBackend):
    """A batch backend that records each batch's session keys and echoes them back."""

    name = "recording"
    can_batch = True

    def __init__(self, fail: bool = False):
        self.batches: list[list[str | None]] = []
        self.items: list[BatchItem] = []
        self.fail = fail

    def generate_batch(self, items):
        self.batches.append([item.session_key for item in items])
        self.items.extend(items)
        if self.fail:
            raise RuntimeError("the model fell over")
        return [Generation(f"reply to {i.session_key}", 1, 1, 0.0) for i in items]


def call_from_threads(batcher: RoundBatcher, keys: list[str], leavers: int = 0, delay=0.0):
    """One member thread per key calls generate (after ``delay`` x its position); ``leavers``
    more members leave without calling. Returns each key's reply or exception."""
    replies: dict[str, object] = {}

    def member(position: int, key: str) -> None:
        time.sleep(delay * position)
        try:
            replies[key] = batcher.generate(MESSAGES, PARAMS, session_key=key).text
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            replies[key] = exc

    def leaver() -> None:
        time.sleep(delay * len(keys))
        batcher.leave()

    with batcher.members(len(keys) + leavers):
        threads = [threading.Thread(target=member, args=(i, k)) for i, k in enumerate(keys)]
        threads += [threading.Thread(target=leaver) for _ in range(leavers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads), "a member never got its reply"
    return replies


def test_a_round_waits_for_every_member_and_runs_in_session_order():
    inner = Recording()
    keys = ["s3", "s1", "s4", "s2"]  # arrival order, 20 ms apart
    replies = call_from_threads(RoundBatcher(inner, max_batch=32), keys, delay=0.02)
    assert inner.batches == [["s1", "s2", "s3", "s4"]]
    assert replies == {k: f"reply to {k}" for k in keys}


def test_a_round_is_split_into_chunks_of_max_batch():
    inner = Recording()
    keys = [f"s{i}" for i in (5, 2, 4, 1, 3)]
    call_from_threads(RoundBatcher(inner, max_batch=2), keys)
    assert inner.batches == [["s1", "s2"], ["s3", "s4"], ["s5"]]


def test_a_member_that_leaves_no_longer_holds_the_round():
    inner = Recording()
    replies = call_from_threads(RoundBatcher(inner), ["a", "b"], leavers=1, delay=0.05)
    assert inner.batches == [["a", "b"]] and replies["a"] == "reply to a"


def test_a_round_whose_member_never_comes_is_sent_after_the_stall_time():
    inner = Recording()
    batcher = RoundBatcher(inner)
    batcher.stall_s = 0.2
    with batcher.members(2):  # the second member is blocked elsewhere and never calls
        assert batcher.generate(MESSAGES, PARAMS, session_key="a").text == "reply to a"
        batcher.leave()
        batcher.leave()
    assert inner.batches == [["a"]] and batcher.stats.stalled == 1


def test_outside_rounds_each_call_is_a_batch_of_one():
    inner = Recording()
    batcher = RoundBatcher(inner)
    assert batcher.generate(MESSAGES, PARAMS, session_key="x").text == "reply to x"
    assert batcher.generate(MESSAGES, PARAMS, session_key="y").text == "reply to y"
    assert inner.batches == [["x"], ["y"]] and batcher.stats.sizes == [1, 1]


def test_a_failed_batch_fails_its_callers_without_hanging():
    replies = call_from_threads(RoundBatcher(Recording(fail=True)), ["a", "b"])
    assert all(isinstance(r, BackendError) for r in replies.values())
    assert "fell over" in str(replies["a"])


def test_drafts_have_no_live_deadline_and_keep_their_seed():
    inner = Recording()
    RoundBatcher(inner).generate(MESSAGES, PARAMS.model_copy(update={"deadline_s": 2}), seed=11)
    (item,) = inner.items
    assert item.params.deadline_s == SIMULATION_DEADLINE_S and item.seed == 11
    assert item.params.max_new_tokens == 8


def test_a_backend_that_cannot_batch_is_called_directly_without_streaming():
    fake = FakeBackend("hi")
    wrapped = simulation_backend(fake, max_batch=8)
    assert isinstance(wrapped, BatchOnly) and not wrapped.can_stream
    with pytest.raises(BackendError, match="cannot stream"):
        wrapped.stream(MESSAGES, PARAMS)
    assert wrapped.generate(MESSAGES, PARAMS).text == "hi"
    assert fake.history[0][1].deadline_s == SIMULATION_DEADLINE_S
    assert isinstance(simulation_backend(Recording(), max_batch=8), RoundBatcher)


def test_a_backend_without_generate_batch_cannot_be_batched():
    with pytest.raises(TypeError, match="generate_batch"):
        RoundBatcher(FakeBackend())
    with pytest.raises(ValueError, match="max_batch"):
        RoundBatcher(Recording(), max_batch=0)
