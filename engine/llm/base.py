"""The backend contract. Backends only generate; prompts, compliance and storage live elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypedDict

from engine.errors import SalesbotError
from engine.generation import GenerationParams


class ChatMessage(TypedDict):
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class BackendError(SalesbotError):
    """The backend failed to produce text; the engine answers with a fallback script instead."""


class LLMBackend(Protocol):
    name: str

    def generate(
        self, messages: list[ChatMessage], params: GenerationParams, seed: int | None = None
    ) -> Generation: ...
