"""LLM backends behind one small contract: ``generate(messages, params, seed, session_key)``.

Every backend derives from :class:`LLMBackend`, which declares what it can do beyond that
(``can_stream``, ``can_batch``; see :mod:`engine.llm.base`); backends are created by name
through :mod:`engine.llm.registry`.
"""

from engine.llm.base import (
    BackendError,
    BatchItem,
    ChatMessage,
    DeadlineExceeded,
    Generation,
    LLMBackend,
)
from engine.llm.batching import BatchingBackend
from engine.llm.registry import available_backends, create_backend, register_backend

__all__ = [
    "BackendError",
    "BatchItem",
    "BatchingBackend",
    "ChatMessage",
    "DeadlineExceeded",
    "Generation",
    "LLMBackend",
    "available_backends",
    "create_backend",
    "register_backend",
]
