"""Backends by name, so flows, the CLI and plug-ins pick one without importing it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import SalesbotError
from engine.llm.base import LLMBackend

_FACTORIES: dict[str, Callable[..., LLMBackend]] = {}


def register_backend(name: str, factory: Callable[..., LLMBackend]) -> None:
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def create_backend(name: str = "transformers", **options: Any) -> LLMBackend:
    if name not in _FACTORIES:
        known = ", ".join(available_backends())
        raise SalesbotError(f"unknown LLM backend {name!r} (known: {known})")
    return _FACTORIES[name](**options)


def _transformers(**options: Any) -> LLMBackend:
    from engine.llm.transformers_backend import TransformersBackend

    return TransformersBackend(**options)


register_backend("transformers", _transformers)
