"""Make any caller text safe to store without losing what was said."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Text every database accepts: no NUL (PostgreSQL rejects it), no lone surrogates (not
    encodable as UTF-8). Each such character becomes U+FFFD, so length and shape are kept."""
    return _UNSTORABLE.sub("\ufffd", text)
