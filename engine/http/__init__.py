"""The HTTP service for call-centre backends (FastAPI on uvicorn): ``salesbot serve``.

``create_app`` and ``app_from_env`` live in :mod:`engine.http.app`; they are loaded on first
use, so the light modules (settings, auth) import without the engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "app_from_env", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "app_from_env"):
        from engine.http import app

        return getattr(app, name)
    if name == "Settings":
        from engine.http.settings import Settings

        return Settings
    raise AttributeError(f"module 'engine.http' has no attribute {name!r}")
