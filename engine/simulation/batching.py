"""The LLM backend a simulation runs with: every call goes through the batching queue.

The engine streams a draft (and cuts it short once its nearest script is settled) whenever the
backend can stream. That is the right trade for one live caller waiting on the line, but a
streamed generation is one sequence in one forward pass, so a simulation of hundreds of
conversations would not batch at all. :class:`BatchOnly` exposes ``generate`` (and
``release``) but not ``stream``, so the engine takes its whole-draft path and concurrent
conversations share the batching backend's forward passes. Each draft is still judged by the
same compliance filter; only the early-stop shortcut is not taken.

Simulated time is not wall time: with 64 conversations in flight each call also waits for the
others' batch, which a live caller never does, so a stage's ``deadline_s`` (a live-latency
guard, queueing included) would turn simulated drafts into deadline fallbacks whenever the
machine is busy, and the results would measure the machine instead of the bot. The adapter
lifts it to :data:`SIMULATION_DEADLINE_S` (a day: no deadline); what a slow backend does to
live calls is measured by the LLM-stage benchmarks, not by the simulation.
"""

from __future__ import annotations

from engine.generation import GenerationParams
from engine.llm.base import ChatMessage, Generation

SIMULATION_DEADLINE_S = 86_400.0  # set on a copy; GenerationParams caps what flows may declare


class BatchOnly:
    """Wraps a backend (usually a ``BatchingBackend``) and hides its ``stream`` capability."""

    def __init__(self, inner):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def load(self) -> None:
        load = getattr(self.inner, "load", None)
        if load is not None:
            load()

    def generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
    ) -> Generation:
        relaxed = params.model_copy(update={"deadline_s": SIMULATION_DEADLINE_S})
        return self.inner.generate(messages, relaxed, seed=seed, session_key=session_key)

    def release(self, session_key: str) -> None:
        release = getattr(self.inner, "release", None)
        if release is not None:
            release(session_key)

    @property
    def stats(self):
        """The batching statistics of the wrapped backend, when it keeps them."""
        return getattr(self.inner, "stats", None)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def simulation_backend(inner, max_batch: int = 32, max_wait_ms: float = 5.0):
    """``inner`` batched (when it can batch and ``max_batch`` > 1), without streaming."""
    from engine.llm import BatchingBackend

    if max_batch > 1 and hasattr(inner, "generate_batch"):
        return BatchOnly(BatchingBackend(inner, max_batch=max_batch, max_wait_ms=max_wait_ms))
    return BatchOnly(inner)
