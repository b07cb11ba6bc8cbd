"""Settings of the HTTP service: one checked object, read from the environment by entry points.

Only entry points read the environment (``salesbot serve`` and the uvicorn app factory, which
runs in every worker process); :func:`engine.http.app.create_app` takes a ``Settings`` object.
Every field ``name`` comes from the variable ``SALESBOT_HTTP_<NAME>``; list and dict fields are
JSON. A bad value is a :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import SalesbotError

ENV_PREFIX = "SALESBOT_HTTP_"


class SettingsError(SalesbotError):
    """A setting is missing or out of range; the message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    flow_dir: Path | None = Field(None, description="Flow folder (the app factory needs it).")
    db_url: str = Field("sqlite:///salesbot.db", description="SQLAlchemy URL of the store.")
    backend: str = Field("transformers", description="LLM backend name (see the registry).")
    backend_options: dict[str, Any] = Field(default_factory=dict)
    plugins: tuple[str, ...] = Field(
        (), description="Modules imported before the backend is created (they register backends)."
    )
    api_keys: tuple[dict[str, Any], ...] = Field(
        (), description="API keys inline (see engine.http.auth); usually from the environment."
    )
    api_keys_file: Path | None = Field(None, description="YAML or JSON file of API keys.")
    max_body_bytes: int = Field(
        65_536, ge=256, le=10_000_000, description="Above any valid body (2,000 escaped chars)."
    )
    max_text_chars: int = Field(2_000, ge=1, le=100_000)
    max_slot_chars: int = Field(500, ge=1, le=100_000)
    rate: float = Field(200.0, gt=0, description="Default requests per second per key, per worker.")
    burst: int = Field(400, ge=1, description="Default bucket size per key, per worker.")
    retry_after_s: int = Field(2, ge=1, le=3_600, description="Retry-After sent with a 503.")
    threads: int = Field(32, ge=1, le=1_000, description="Threads running blocking engine calls.")
    ready_timeout_s: float = Field(2.0, gt=0, le=60)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``SALESBOT_HTTP_*`` variables; ``overrides`` win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            variable = ENV_PREFIX + name.upper()
            if variable not in environ:
                continue
            raw = environ[variable]
            if name == "plugins":
                values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif name in ("backend_options", "api_keys"):
                try:
                    values[name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{variable}: not valid JSON ({exc.msg})") from None
                if name == "api_keys" and isinstance(values[name], dict):
                    values[name] = values[name].get("keys", values[name])
            else:
                values[name] = raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise SettingsError(problems) from None

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings (how ``serve`` hands them to workers)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name == "plugins":
                text = ",".join(value)
            elif isinstance(value, dict | list):
                text = json.dumps(value)
            else:
                text = str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env


def import_plugins(names: tuple[str, ...]) -> None:
    """Import plug-in modules; importing one registers its backends or embedders."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SettingsError(f"{ENV_PREFIX}PLUGINS: cannot import {name!r} ({exc})") from None
