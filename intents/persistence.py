"""Save and load trained classifiers safely; train once per set of examples.

Two locks on the door, because a model file is code-shaped data:

* files are written with skops (``skops.io``), not pickle: loading instantiates only types on an
  allow-list (scikit-learn's, numpy's, scipy's and this package's own), so a crafted file cannot
  run code. A file that names any other type is refused;
* every file has a JSON manifest beside it with its sha256, the training key and the library
  versions; a file whose digest does not match is refused with :class:`ModelIntegrityError`
  before skops even parses it.

The cache key is the content hash of the examples plus the classifier's parameters, so editing
intents.yaml (or the flow's ``classifier:`` block) retrains automatically. A cache entry that
fails either check is reported with a warning and retrained, never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sklearn
import skops
import skops.io as sio

from engine.errors import SalesbotError
from engine.hashing import content_hash, file_sha256
from intents.classifier import IntentClassifier
from intents.paths import cache_root

CACHE_SCHEME = "intents:v2:"
MODEL_SUFFIX = ".skops"
# Types of this package that may appear in a model file; everything else must be on skops's
# own allow-list of scikit-learn / numpy / scipy types.
TRUSTED_TYPES = (
    "intents.classifier.IntentClassifier",
    "intents.embeddings.EmbeddingFeatures",
    "intents.rejection.RejectionRule",
)


class ModelIntegrityError(SalesbotError):
    """A model file was altered, lacks its manifest, or names types that are not trusted."""


def default_cache_dir() -> Path:
    return cache_root() / "intents"


def training_key(examples: Mapping[str, Sequence[str]], params: Mapping[str, Any]) -> str:
    """``intents:v2:<sha256>`` over canonical JSON of the examples, parameters and sklearn."""
    return content_hash(
        {
            "examples": {k: list(v) for k, v in sorted(examples.items())},
            "params": dict(params),
            "sklearn": sklearn.__version__,
        },
        CACHE_SCHEME,
    )


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def save(model: IntentClassifier, path: str | Path, key: str = "") -> Path:
    """Write the model (skops) and its manifest, each atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(sio.dumps(model))
    os.replace(tmp.name, path)
    manifest = {
        "file": path.name,
        "sha256": file_sha256(path),
        "key": key,
        "format": "skops",
        "params": {k: v for k, v in model.get_params().items()},
        "classes": [str(c) for c in model.classes_],
        "versions": {
            "sklearn": sklearn.__version__,
            "skops": skops.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
    }
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8"
    ) as tmp:
        json.dump(manifest, tmp, indent=2, ensure_ascii=False)
    os.replace(tmp.name, manifest_path(path))
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    where = manifest_path(path)
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"{path}: no manifest ({where.name}) beside the model file; refusing to load a model"
            " whose origin cannot be checked"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{where}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise ModelIntegrityError(f"{where}: the manifest has no sha256 for the model file")
    return manifest


def load(path: str | Path, key: str | None = None) -> IntentClassifier:
    """The model saved at ``path``; raises :class:`ModelIntegrityError` if it cannot be trusted.

    ``key``, when given, must equal the training key recorded at save time.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelIntegrityError(f"{path}: no such model file")
    manifest = read_manifest(path)
    actual = file_sha256(path)
    if actual != manifest["sha256"]:
        raise ModelIntegrityError(
            f"{path}: sha256 {actual[:16]}... does not match its manifest "
            f"({manifest['sha256'][:16]}...): the file was altered after it was saved; "
            "refusing to load it (retrain with `salesbot intents train`)"
        )
    if key is not None and manifest.get("key") != key:
        raise ModelIntegrityError(f"{path}: trained on other examples or parameters than asked")
    data = path.read_bytes()
    try:
        untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ModelIntegrityError(
                f"{path}: refusing to load types that are not trusted: "
                + ", ".join(sorted(untrusted))
            )
        model = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except ModelIntegrityError:
        raise
    except Exception as exc:  # skops raises many kinds on a malformed file
        raise ModelIntegrityError(f"{path}: not a readable skops model file ({exc})") from None
    if not isinstance(model, IntentClassifier):
        raise ModelIntegrityError(f"{path}: holds a {type(model).__name__}, not a classifier")
    return model


def load_or_train(
    examples: Mapping[str, Sequence[str]],
    *,
    language: str,
    threshold: float | str = 0.3,
    margin: float | str = 0.1,
    model: str = "tfidf",
    calibrate: bool = True,
    max_accuracy_drop: float = 0.01,
    cache_dir: Path | None = None,
) -> IntentClassifier:
    """A classifier for these examples: from the cache when its key matches, else trained now.

    ``examples`` may include an ``out_of_scope`` list: it becomes an explicit class.
    """
    params = IntentClassifier(
        language=language,
        model=model,
        threshold=threshold,
        margin=margin,
        calibrate=calibrate,
        max_accuracy_drop=max_accuracy_drop,
    ).get_params()
    key = training_key(examples, params)
    path = (cache_dir or default_cache_dir()) / f"{key.split(':')[-1][:32]}{MODEL_SUFFIX}"
    if path.is_file():
        try:
            return load(path, key)
        except ModelIntegrityError as exc:
            warnings.warn(f"intent model cache: {exc}; retraining", stacklevel=2)
    texts = [t for intent in sorted(examples) for t in examples[intent]]
    labels = [intent for intent in sorted(examples) for _ in examples[intent]]
    classifier = IntentClassifier(**params).fit(texts, labels)
    with contextlib.suppress(OSError):  # a read-only cache only costs a retrain next time
        save(classifier, path, key)
    return classifier
