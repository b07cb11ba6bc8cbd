"""Idempotency keys: a retried request gets the stored result; a reused key gets an error.

A caller (the HTTP service, a simulator resuming a run) sends a key with a start or a turn. The
engine stores the key with the row it writes, together with a fingerprint of the request (its
session and body). When the key comes back:

- same fingerprint: a retry; the stored reply is returned and nothing is written;
- another fingerprint: the key was reused for a different request, a client bug that must not
  pass for a retry, so :class:`~engine.errors.IdempotencyKeyReused` is raised (HTTP 422, as
  Stripe and the IETF Idempotency-Key draft do).

Keys are scoped to a session for turns (the session is in the request's URL) and to the caller's
namespace (the HTTP service uses the API key's name) for starts, whose session id is derived
from the key so that a retried start finds the session its first attempt opened.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.errors import IdempotencyKeyReused
from engine.hashing import sha256_hex

SESSION_TAG = "session:v1:"  # session ids derived from an idempotency key carry this scheme
FINGERPRINT_TAG = "request:v1:"


def derived_session_id(idempotency_key: str, namespace: str = "") -> str:
    """The session id a start with ``idempotency_key`` gets (stable across versions: a retry
    after an upgrade must find the same session)."""
    return sha256_hex(f"{SESSION_TAG}{namespace}\x00{idempotency_key}")[:32]


def fingerprint(kind: str, session_id: str, body: Mapping[str, Any]) -> str:
    """A hash of one request: what it is (``start``, ``turn``), its session and its body."""
    canonical = json.dumps(
        [kind, session_id, body], sort_keys=True, default=str, ensure_ascii=False
    )
    return sha256_hex(f"{FINGERPRINT_TAG}{canonical}")


def check_retry(stored: Mapping[str, Any], key: str, expected: str | None) -> None:
    """Raise :class:`IdempotencyKeyReused` unless the stored row was written for the same
    request (rows stored before fingerprints were kept carry none and are taken on trust)."""
    found = stored.get("request_hash")
    if found is not None and expected is not None and found != expected:
        raise IdempotencyKeyReused(key)
