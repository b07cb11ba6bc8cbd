"""Train once per set of examples, cache on disk, and refuse cached files that were tampered with.

A model file is a joblib pickle, and unpickling runs code, so every file is listed with its
sha256 in a JSON manifest kept beside it; a file whose digest does not match is never loaded (it
is retrained instead). The cache key is the content hash of the examples and the classifier's
parameters, so editing intents.yaml retrains automatically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import joblib
import sklearn

from intents.classifier import IntentClassifier

CACHE_SCHEME = "intents:v1:"


def default_cache_dir() -> Path:
    root = os.environ.get("SALESBOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "salesbot"
    )
    return Path(root) / "intents"


def training_key(examples: Mapping[str, Sequence[str]], params: dict) -> str:
    canonical = json.dumps(
        {
            "examples": {k: list(v) for k, v in sorted(examples.items())},
            "params": params,
            "sklearn": sklearn.__version__,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return CACHE_SCHEME + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: IntentClassifier, path: Path, key: str) -> None:
    """Write the model and its manifest atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        joblib.dump(model, tmp.name)
    os.replace(tmp.name, path)
    manifest = {
        "key": key,
        "file": path.name,
        "sha256": _sha256(path),
        "sklearn": sklearn.__version__,
    }
    path.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=2))


def load(path: Path, key: str) -> IntentClassifier | None:
    """The cached model, or None if it is missing, stale, or does not match its manifest."""
    manifest_path = path.with_suffix(".manifest.json")
    if not path.is_file() or not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("sha256") != _sha256(path):
        return None
    model = joblib.load(path)
    return model if isinstance(model, IntentClassifier) else None


def load_or_train(
    examples: Mapping[str, Sequence[str]],
    *,
    language: str,
    threshold: float = 0.3,
    margin: float = 0.1,
    cache_dir: Path | None = None,
) -> IntentClassifier:
    """A classifier for these examples: from the cache when its key matches, else trained now."""
    params = IntentClassifier(language=language, threshold=threshold, margin=margin).get_params()
    key = training_key(examples, params)
    path = (cache_dir or default_cache_dir()) / f"{key.split(':')[-1][:32]}.joblib"
    model = load(path, key)
    if model is not None:
        return model
    texts = [t for intent in sorted(examples) for t in examples[intent]]
    labels = [intent for intent in sorted(examples) for _ in examples[intent]]
    model = IntentClassifier(**params).fit(texts, labels)
    with contextlib.suppress(OSError):  # a read-only cache only costs a retrain next time
        save(model, path, key)
    return model
