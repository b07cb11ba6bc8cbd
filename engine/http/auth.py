"""API keys: configured as SHA-256 digests, checked in constant time, each with scopes.

A key file (YAML or JSON), or the ``SALESBOT_HTTP_API_KEYS`` variable (JSON), lists keys::

    keys:
      - name: dialer-eu                 # shows up in metrics and logs, never the key itself
        sha256: 9f86d08...              # hex digest of the key (printf %s KEY | sha256sum)
        scopes: [turns]                 # turns: sessions and turns; reports: experiment reports
        rate: 100                       # optional: requests per second for this key, per worker
        burst: 200                      # optional: bucket size for this key, per worker

``key: <plaintext>`` may stand in for ``sha256`` (handy in an environment variable); it is
hashed when loaded and the plaintext is not kept. Clients send ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``.

Run ``python -m engine.http.auth`` to mint a random key and print its configuration line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from engine.http.settings import Settings, SettingsError

Scope = Literal["turns", "reports"]
SCOPES: tuple[str, ...] = ("turns", "reports")


class KeyConfig(BaseModel):
    """One configured key, as written in the file or the environment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    key: SecretStr | None = Field(None, min_length=16)
    scopes: list[Scope] = Field(min_length=1)
    rate: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of `sha256` (hex digest) or `key` (plaintext)")
        return self


@dataclass(frozen=True)
class ApiKey:
    """A key as the service holds it: a digest, never the key."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    rate: float
    burst: int


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The configured keys. ``authenticate`` compares the presented key's digest with every
    configured digest using ``hmac.compare_digest`` and never stops early, so the time taken
    does not tell which key, or how much of one, matched."""

    def __init__(self, keys: Iterable[ApiKey]):
        self.keys = tuple(keys)
        names = [k.name for k in self.keys]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SettingsError(f"API key names must be unique: {', '.join(duplicates)}")

    def __len__(self) -> int:
        return len(self.keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        wanted = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, wanted):
                found = key
        return found


def _parse(entries: Any, where: str, settings: Settings) -> list[ApiKey]:
    if isinstance(entries, Mapping):
        entries = entries.get("keys")
    if not isinstance(entries, list):
        raise SettingsError(f"{where}: expected a list of keys (or a mapping with `keys:`)")
    keys = []
    for i, entry in enumerate(entries):
        try:
            config = KeyConfig.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"keys[{i}].{'.'.join(str(p) for p in e['loc']) or '(entry)'}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise SettingsError(f"{where}: {problems}") from None
        raw = (
            bytes.fromhex(config.sha256) if config.sha256 else digest(config.key.get_secret_value())  # type: ignore[union-attr]
        )
        keys.append(
            ApiKey(
                name=config.name,
                digest=raw,
                scopes=frozenset(config.scopes),
                rate=config.rate or settings.rate,
                burst=config.burst or settings.burst,
            )
        )
    return keys


def load_keys(settings: Settings) -> KeyRing:
    """Keys from ``settings.api_keys`` and ``settings.api_keys_file``; at least one is required
    (a service without keys would answer anyone)."""
    keys = _parse(list(settings.api_keys), "SALESBOT_HTTP_API_KEYS", settings)
    path = settings.api_keys_file
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read API key file ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML/JSON ({exc})") from None
        keys += _parse(data, str(path), settings)
    if not keys:
        raise SettingsError(
            "no API keys configured: give --api-keys FILE or set SALESBOT_HTTP_API_KEYS"
        )
    return KeyRing(keys)


def mint(name: str = "client", scopes: tuple[str, ...] = ("turns",)) -> tuple[str, str]:
    """A new random key and the JSON line that configures it (the digest, not the key)."""
    key = secrets.token_urlsafe(32)
    line = json.dumps({"name": name, "sha256": digest(key).hex(), "scopes": list(scopes)})
    return key, line


if __name__ == "__main__":  # pragma: no cover
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "client"
    scopes = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("turns",)
    new_key, config_line = mint(name, scopes)
    print(f"key (give it to the client, store it nowhere else): {new_key}")
    print(f"configuration entry: {config_line}")
