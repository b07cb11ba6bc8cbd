"""LLM backends behind one small contract: ``generate(messages, params) -> Generation``."""

from engine.llm.base import BackendError, ChatMessage, Generation, LLMBackend
from engine.llm.registry import available_backends, create_backend, register_backend

__all__ = [
    "BackendError",
    "ChatMessage",
    "Generation",
    "LLMBackend",
    "available_backends",
    "create_backend",
    "register_backend",
]
