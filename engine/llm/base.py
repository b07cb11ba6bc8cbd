"""The backend contract. Backends only generate; prompts, compliance and storage live elsewhere.

Every backend derives from :class:`LLMBackend` and says what it can do with class attributes,
so callers read a flag instead of probing for methods:

- ``generate(messages, params, seed=None, session_key=None) -> Generation``: always. A backend
  implements ``_generate(request)``; the public signature lives here, once.
- ``can_stream``: ``stream(...) -> Iterator[str]`` yields decoded text chunks as they are
  generated (the backend implements ``_stream(request)``); closing the iterator early stops
  generation (early stop relies on it).
- ``can_batch``: ``generate_batch(items) -> list[Generation]`` runs many requests at once (one
  forward pass per step in-process, concurrent requests for a server). An item is a
  :class:`BatchItem` or a tuple ``(messages, params, seed[, session_key])``.
- ``can_mix_params``: one batch may mix generation parameters (else callers group by them).
- ``load()``, ``release(session_key)``, ``close()``: no-ops unless a backend has something to
  load, per-session state to forget, or threads and connections to free.
- ``prefill(messages, session_key)``: told the reply that was sent (the last message), a
  backend with a per-session prefix cache may encode it before the customer's next words
  arrive (llama.cpp does, in the background); a no-op elsewhere.
- ``can_constrain = True`` with a ``choices`` keyword on ``generate`` / ``stream`` (and
  ``BatchItem.choices``): the draft is restricted to exactly one of the given texts (the
  stage's rendered candidate scripts), and generation stops as soon as the prefix names a single
  one, whose full text is returned. See :mod:`engine.llm.hf.constrained`.

``session_key`` lets a backend keep per-session state across turns (the in-process backend keeps
the prompt's KV cache); backends without such state ignore it. :class:`Deadline` is how every
backend measures ``params.deadline_s`` and words the error when it passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict

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
class Deadline:
    """The moment a call must be answered by: ``params.deadline_s`` after it started."""

    at: float  # on ``clock``
    seconds: float
    clock: Callable[[], float] = time.perf_counter

    @classmethod
    def start(
        cls, params: GenerationParams, clock: Callable[[], float] = time.perf_counter
    ) -> Deadline:
        return cls(clock() + params.deadline_s, params.deadline_s, clock)

    def left(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self.clock())

    def passed(self) -> bool:
        return self.clock() > self.at

    def exceeded(self, who: str = "") -> DeadlineExceeded:
        """The error to raise when nothing usable came in time."""
        prefix = f"{who} gave " if who else ""
        return DeadlineExceeded(f"{prefix}no reply within {self.seconds:g} s")


@dataclass(frozen=True)
class BatchItem:
    """One request (of a batch or alone); tuples ``(messages, params, seed[, session_key])``
    convert."""

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


def _texts(choices: Sequence[str] | None) -> tuple[str, ...] | None:
    """``choices`` as a tuple; an empty sequence is a caller's error, not "unconstrained"."""
    if choices is None:
        return None
    if not choices:
        raise BackendError("constrained decoding needs at least one choice")
    return tuple(choices)


class LLMBackend:
    """The base of every backend; see the module docstring for the capabilities."""

    name: str = "backend"
    can_stream: bool = False
    can_batch: bool = False
    can_mix_params: bool = False
    can_constrain: bool = False  # honours ``choices`` (see the module docstring)

    def load(self) -> None:
        """Load weights or open connections before the first call (default: nothing to do)."""

    def release(self, session_key: str) -> None:
        """Forget what is cached for a session that ended (default: nothing is cached)."""

    def close(self) -> None:
        """Free threads and connections (default: none are held)."""

    def prefill(self, messages: list[ChatMessage], session_key: str | None) -> None:
        """The reply that ends ``messages`` was sent: a backend with a per-session prefix cache
        may encode it now, off the next decision's path (default: nothing to do)."""

    def generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
        choices: Sequence[str] | None = None,  # only where ``can_constrain`` is True
    ) -> Generation:
        return self._generate(
            BatchItem(messages, params, seed, session_key, choices=_texts(choices))
        )

    def stream(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
        choices: Sequence[str] | None = None,
    ) -> Iterator[str]:
        if not self.can_stream:
            raise BackendError(f"the {self.name} backend cannot stream")
        request = BatchItem(messages, params, seed, session_key, choices=_texts(choices))
        return self._stream(request)

    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]:
        raise BackendError(f"the {self.name} backend cannot batch")

    def _generate(self, request: BatchItem) -> Generation:
        raise NotImplementedError

    def _stream(self, request: BatchItem) -> Iterator[str]:
        raise NotImplementedError


class BackendWrapper(LLMBackend):
    """A backend in front of another (batching, simulation): lifecycle calls pass through."""

    def __init__(self, inner: LLMBackend, name: str | None = None):
        self.inner = inner
        self.name = name or inner.name

    @property
    def can_constrain(self) -> bool:  # type: ignore[override]
        """Constrained decoding is the wrapped backend's: a wrapper passes ``choices`` on."""
        return self.inner.can_constrain

    def load(self) -> None:
        self.inner.load()

    def release(self, session_key: str) -> None:
        self.inner.release(session_key)

    def close(self) -> None:
        self.inner.close()

    def prefill(self, messages: list[ChatMessage], session_key: str | None) -> None:
        self.inner.prefill(messages, session_key)
