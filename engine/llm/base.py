"""The backend contract. Backends only generate; prompts, compliance and storage live elsewhere.

Every backend has ``generate``. Optional capabilities, which callers detect with ``getattr``:

- ``stream(messages, params, seed=None, session_key=None) -> Iterator[str]``: decoded text chunks
  as they are generated; closing the iterator early stops generation (early stop relies on it).
- ``generate_batch(items) -> list[Generation]``: many requests at once (one forward pass per
  step in-process, concurrent requests for a server). An item is ``(messages, params, seed)``
  or ``(messages, params, seed, session_key)``.
- ``release(session_key)``: forget what is cached for a session that ended.
- ``can_constrain = True`` with a ``choices`` keyword on ``generate`` / ``stream`` (and
  ``BatchItem.choices``): the draft is restricted to exactly one of the given texts (the
  stage's rendered candidate scripts), and generation stops as soon as the prefix names a single
  one, whose full text is returned. See :mod:`engine.llm.hf.constrained`.

``session_key`` lets a backend keep per-session state across turns (the in-process backend keeps
the prompt's KV cache); backends without such state ignore it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict, runtime_checkable

from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams


class ChatMessage(TypedDict):
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str = "stop"  # stop | length | deadline
    cached_tokens: int = 0  # prompt tokens whose KV came from the session cache


class BackendError(SalesbotError):
    """The backend failed to produce text; the engine answers with a fallback script instead."""


class DeadlineExceeded(BackendError):
    """The backend did not answer within ``GenerationParams.deadline_s``."""


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch; tuples ``(messages, params, seed[, session_key])`` convert."""

    messages: Sequence[ChatMessage]
    params: GenerationParams
    seed: int | None = None
    session_key: str | None = None
    deadline_at: float | None = None  # time.perf_counter() after which nobody waits for it
    choices: tuple[str, ...] | None = None  # constrained decoding: the only texts allowed

    @classmethod
    def of(cls, item: BatchItem | tuple) -> BatchItem:
        if isinstance(item, BatchItem):
            return item
        if not isinstance(item, tuple) or not 2 <= len(item) <= 4:
            raise TypeError(
                "a batch item is (messages, params, seed) or (messages, params, seed, session_key)"
            )
        return cls(*item)


class LLMBackend(Protocol):
    name: str

    def generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
        choices: Sequence[str] | None = None,  # only where ``can_constrain`` is True
    ) -> Generation: ...


@runtime_checkable
class StreamingBackend(Protocol):
    def stream(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
    ) -> Iterator[str]: ...


@runtime_checkable
class BatchBackend(Protocol):
    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]: ...
