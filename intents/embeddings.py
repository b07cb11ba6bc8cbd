"""Sentence-embedding features (all-MiniLM-L6-v2) with the two caches that make them cheap.

Embedding is the slow part of model (b): 40-400 sentences per second on two busy CPU cores. So

* the weights are loaded once per process and shared by every classifier (the same
  :class:`~engine.compliance.embedders.MiniLMEmbedder` code the compliance filter uses);
* a list of texts embedded for training or evaluation is stored on disk as a plain ``.npy``
  (read with ``allow_pickle=False``, so a cache file cannot run code), keyed by the sha256 of the
  embedder name and the texts: retraining on the same examples embeds nothing;
* every embedded text also goes into an in-memory LRU, so cross-validation folds (subsets of
  the training texts) and repeated utterances ("yes", "no thanks") are never embedded twice.

The transformer holds no model and no lock, only its parameters, so it pickles and serialises
with skops like any scikit-learn estimator.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from intents.paths import cache_root

EMBEDDING_SCHEME = "emb:v1:"
MIN_DISK_BATCH = 32  # smaller batches are not worth a file
LRU_SIZE = 50_000  # ~80 MB at most; a flow's examples and recent utterances fit easily
EMBEDDING_DIM = 384


@functools.lru_cache(maxsize=4)
def shared_embedder(name: str):
    """One loaded embedder per name per process (loading MiniLM takes seconds)."""
    from engine.compliance.embedders import create_embedder

    return create_embedder(name)


class _TextLRU:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            row = self._items.get(key)
            if row is not None:
                self._items.move_to_end(key)
            return row

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: tuple[str, str], row: np.ndarray) -> None:
        with self._lock:
            self._items[key] = row
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_LRU = _TextLRU(LRU_SIZE)


def _batch_key(name: str, texts: Sequence[str]) -> str:
    """sha256 over the embedder's name and weights version and the texts, NUL-separated."""
    version = str(getattr(shared_embedder(name), "version", ""))
    digest = hashlib.sha256(f"{EMBEDDING_SCHEME}{name}\x00{version}".encode())
    for text in texts:
        digest.update(b"\x00" + text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def embed(
    name: str, texts: Sequence[str], cache_dir: Path | None = None, *, cache: bool = True
) -> np.ndarray:
    """Embeddings of ``texts`` (rows L2-normalised), from a cache where possible.

    ``cache=False`` computes every row afresh (for honest latency figures).
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    if not cache:
        return np.asarray(shared_embedder(name).embed_batch(texts), dtype=np.float32)
    rows: list[np.ndarray | None] = [_LRU.get((name, t)) for t in texts]
    missing = [i for i, row in enumerate(rows) if row is None]
    if not missing:
        return np.vstack(rows)
    if len(missing) >= MIN_DISK_BATCH:
        matrix = _embed_on_disk(name, texts, cache_dir)  # the whole batch: one stable key
        for text, row in zip(texts, matrix, strict=True):
            _LRU.put((name, text), row)
        return matrix
    fresh = np.asarray(shared_embedder(name).embed_batch([texts[i] for i in missing]))
    for i, row in zip(missing, fresh.astype(np.float32), strict=True):
        rows[i] = row
        _LRU.put((name, texts[i]), row)
    return np.vstack(rows)


def clear_memory_cache() -> None:
    """Forget the in-memory rows (benchmarks measure uncached latency after this)."""
    _LRU.clear()


def _embed_on_disk(name: str, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    folder = cache_dir or cache_root() / "embeddings"
    path = folder / f"{_batch_key(name, texts)[:40]}.npy"
    with contextlib.suppress(OSError, ValueError):
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    matrix = np.asarray(shared_embedder(name).embed_batch(texts), dtype=np.float32)
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy.tmp", delete=False) as tmp:
            np.save(tmp, matrix, allow_pickle=False)
        os.replace(tmp.name, path)
    return matrix


class EmbeddingFeatures(TransformerMixin, BaseEstimator):
    """Sentence embeddings as a sparse block, scaled by ``weight`` for a FeatureUnion.

    TF-IDF blocks have unit-norm rows too, so ``weight`` sets how much the embedding counts
    against the n-grams in the linear model (tuned on CLINC150's validation split).
    """

    def __init__(self, embedder: str = "minilm", weight: float = 1.0, cache: bool = True):
        self.embedder = embedder
        self.weight = weight
        self.cache = cache

    def fit(self, X: Sequence[str], y: object = None) -> EmbeddingFeatures:
        self.n_features_in_ = 1
        return self

    def transform(self, X: Sequence[str]) -> sparse.csr_matrix:
        return sparse.csr_matrix(self.weight * embed(self.embedder, list(X), cache=self.cache))
