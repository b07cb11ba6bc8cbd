"""Content hashes: tagged sha256 over canonical JSON, and the sha256 of a file.

One place for both, because stored records (flow versions, experiment definitions, run ids,
cache keys, model manifests) carry these hashes: a second copy that drifted in one detail
(key order, separators, ``ensure_ascii``) would silently give old records a new meaning.
Standard library only, so every room (``intents/``, ``storage/``, ``engine/``) may import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20  # read files in 1 MiB blocks: model files are gigabytes


def canonical_json(data: Any) -> str:
    """``data`` as JSON with sorted keys, no spaces and non-ASCII kept: equal data, equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(data: Any, tag: str) -> str:
    """``tag`` + sha256 of the canonical JSON of ``data``, e.g. ``flow:v1:<64 hex>``.

    The tag names what was hashed and the scheme's version, so a hash says what it is.
    """
    return tag + sha256_hex(canonical_json(data))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (constant memory for large files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
