"""Fakes for process boundaries only: an LLM backend whose replies a test scripts."""

from __future__ import annotations

from collections import deque

from engine.flow.generation import GenerationParams
from engine.llm.base import BackendError, BatchItem, ChatMessage, Generation, LLMBackend


def customer_words(messages) -> str:
    """What the customer last said: the last user message. A stand-in LLM that reacts to the
    customer reads this, not the last message: a hybrid prompt ends with the engine's note
    (the stage and the classifier's reading)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class FakeBackend(LLMBackend):
    """Returns queued replies in order (or ``default``); records every prompt it was given.

    Queue an exception instance to make that call fail like a broken backend.
    """

    name = "fake"

    def __init__(self, default: str = ""):
        self.default = default
        self.queue: deque[str | Exception] = deque()
        self.history: list[tuple[list[ChatMessage], GenerationParams]] = []
        self.seeds: list[int | None] = []
        self.prefilled: list[tuple[list[ChatMessage], str | None]] = []  # replies sent

    def prefill(self, messages: list[ChatMessage], session_key: str | None) -> None:
        self.prefilled.append((list(messages), session_key))

    def enqueue(self, *items: str | Exception) -> FakeBackend:
        self.queue.extend(items)
        return self

    def _generate(self, request: BatchItem) -> Generation:
        self.history.append((list(request.messages), request.params))
        self.seeds.append(request.seed)
        item = self.queue.popleft() if self.queue else self.default
        if isinstance(item, Exception):
            if isinstance(item, BackendError):
                raise item
            raise BackendError(str(item))
        return Generation(item, prompt_tokens=10, completion_tokens=len(item.split()), seconds=0.0)
