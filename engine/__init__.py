"""salesbot: a hybrid sales-call dialogue engine.

The public API is small: load a flow, build an :class:`Engine`, call ``start``/``turn``/``end``::

    from engine import Engine

    engine = Engine.from_flow_dir("flows/broadband_en", "sqlite:///salesbot.db")

``Engine``, ``load_flow`` and ``Reply`` are imported on first use (PEP 562), so that
``import engine.flow`` or ``import engine.errors`` does not load torch and the models' code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import FlowValidationError, SalesbotError, SessionNotFound

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.flow import load_flow
    from engine.reply import Reply

__all__ = [
    "Engine",
    "FlowValidationError",
    "Reply",
    "SalesbotError",
    "SessionNotFound",
    "load_flow",
]

_LAZY = {"Engine": "engine.engine", "load_flow": "engine.flow", "Reply": "engine.reply"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
