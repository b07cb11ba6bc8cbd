"""Where the intent package keeps its caches (trained models, embeddings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SALESBOT_CACHE``, else ``$XDG_CACHE_HOME/salesbot``, else ``~/.cache/salesbot``."""
    root = os.environ.get("SALESBOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "salesbot"
    )
    return Path(root)
