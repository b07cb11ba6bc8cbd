"""The script index: one L2-normalised vector per approved wording, searched by exact cosine.

Embedding a library is the slow part of starting an engine (MiniLM: about 80 wordings a second
on two busy cores), so the matrix is cached on disk. The cache key is a tagged sha256 over the
library hash, the embedder's name and version and the exact texts embedded (``index:v1:``);
a file is used only when its manifest carries that key and the file's own sha256, so an edited
library, another embedder or a truncated file always means a rebuild, never stale vectors.
Vectors are stored as ``.npz`` and loaded with ``allow_pickle=False``: a cache file cannot run
code. Embedders whose vectors depend on the library itself (``fits_corpus``, TF-IDF) are fitted
and embedded afresh instead; that takes milliseconds.

Search is exact: a matrix-vector product over the stage's wordings (20,000 x 384 floats is a
few milliseconds; TF-IDF matrices stay sparse), then the best wording per script
(``np.maximum.reduceat``), then top-k.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from engine.compliance.embedders import Embedder
from engine.hashing import content_hash, file_sha256

INDEX_SCHEME = "index:v1:"


def default_cache_dir() -> Path:
    root = os.environ.get("SALESBOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "salesbot"
    )
    return Path(root) / "compliance"


@dataclass(frozen=True)
class IndexEntry:
    """One script as the index sees it: its id, its act and the texts it is matched by."""

    script_id: str
    act: str
    texts: tuple[str, ...]


def index_key(entries: Sequence[IndexEntry], embedder: Embedder, library_hash: str) -> str:
    return content_hash(
        {
            "library": library_hash,
            "embedder": embedder.name,
            "version": getattr(embedder, "version", None),
            "entries": [[e.script_id, list(e.texts)] for e in entries],
        },
        INDEX_SCHEME,
    )


def as_matrix(embedded) -> np.ndarray | sparse.csr_matrix:
    """An embedder's output as float32: dense and C-contiguous, or sparse CSR."""
    if sparse.issparse(embedded):
        return sparse.csr_matrix(embedded, dtype=np.float32)
    return np.ascontiguousarray(embedded, dtype=np.float32)


def as_vector(row) -> np.ndarray:
    """One embedded row (dense, or a 1 x d sparse matrix) as a dense 1-D float32 vector."""
    if sparse.issparse(row):
        return np.asarray(row.todense(), dtype=np.float32).ravel()
    return np.asarray(row, dtype=np.float32).ravel()


def _cacheable(embedder: Embedder) -> bool:
    return getattr(embedder, "version", None) is not None and not getattr(
        embedder, "fits_corpus", True
    )


def _load_cached(path: Path, key: str, rows: int) -> np.ndarray | None:
    """The cached matrix when the manifest names this key and the file is intact, else None."""
    manifest_path = path.with_suffix(".manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != key or manifest.get("sha256") != file_sha256(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            matrix = data["matrix"]
    except (OSError, ValueError, KeyError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        return None
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _save(path: Path, key: str, matrix: np.ndarray) -> None:
    """Write matrix then manifest, each atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".npz") as tmp:
        np.savez(tmp, matrix=matrix)
    os.replace(tmp.name, path)
    manifest = {"key": key, "file": path.name, "sha256": file_sha256(path)}
    manifest["rows"], manifest["dim"] = matrix.shape
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".json", encoding="utf-8"
    ) as tmp:
        json.dump(manifest, tmp, indent=2)
    os.replace(tmp.name, path.with_suffix(".manifest.json"))


class ScriptIndex:
    """Vectors of every wording of every script, grouped by script (wordings are contiguous)."""

    def __init__(
        self,
        entries: Sequence[IndexEntry],
        matrix: np.ndarray,
        key: str,
        from_cache: bool = False,
    ):
        self.entries = tuple(entries)
        self.ids = [e.script_id for e in self.entries]
        self.position = {script_id: i for i, script_id in enumerate(self.ids)}
        counts = np.array([len(e.texts) for e in self.entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.counts = counts
        self.matrix = matrix
        self.key = key
        self.from_cache = from_cache
        self._views: dict[tuple[str, ...], StageView] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        entries: Sequence[IndexEntry],
        embedder: Embedder,
        *,
        library_hash: str,
        cache_dir: Path | None = None,
        use_cache: bool = True,
    ) -> ScriptIndex:
        """Load the index from the disk cache when its key matches, else embed and cache it."""
        texts = [t for e in entries for t in e.texts]
        key = index_key(entries, embedder, library_hash)
        cacheable = use_cache and _cacheable(embedder)
        path = (cache_dir or default_cache_dir()) / f"{key.split(':')[-1][:40]}.npz"
        if cacheable:
            cached = _load_cached(path, key, len(texts))
            if cached is not None:
                return cls(entries, cached, key, from_cache=True)
        embedder.fit(texts)
        matrix = as_matrix(embedder.embed_batch(texts))
        if cacheable and not sparse.issparse(matrix):
            with contextlib.suppress(OSError):  # a read-only cache only costs a rebuild
                _save(path, key, matrix)
        return cls(entries, matrix, key)

    def view(self, script_ids: Sequence[str]) -> StageView:
        """The sub-index of ``script_ids`` (a stage's candidates), built once and kept."""
        key = tuple(script_ids)
        view = self._views.get(key)
        if view is None:
            with self._lock:
                view = self._views.get(key) or StageView(self, key)
                self._views[key] = view
        return view


class StageView:
    """A contiguous copy of one stage's rows, so a search touches only what it may return."""

    def __init__(self, index: ScriptIndex, script_ids: tuple[str, ...]):
        self.script_ids = script_ids
        positions = [index.position[s] for s in script_ids]
        rows = [
            np.arange(index.starts[p], index.starts[p] + index.counts[p], dtype=np.int64)
            for p in positions
        ]
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self.matrix = as_matrix(index.matrix[flat])
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        acts = [index.entries[p].act for p in positions]
        codes = {act: i for i, act in enumerate(dict.fromkeys(acts))}
        self.acts = np.array([codes[a] for a in acts], dtype=np.int64)

    def script_scores(self, vector: np.ndarray) -> np.ndarray:
        """Cosine of ``vector`` with each script: the best of its wordings."""
        if not len(self.script_ids):
            return np.zeros(0, dtype=np.float32)
        if sparse.issparse(self.matrix):
            rows = np.asarray(self.matrix @ vector).ravel()
        else:
            # einsum, not BLAS: a multi-threaded sgemv on busy cores waits for its threads
            # (measured p90 42 ms for a 0.1 ms product at 2,000 x 384); einsum is one thread.
            rows = np.einsum("ij,j->i", self.matrix, vector)
        return np.maximum.reduceat(rows, self.starts)

    def top(
        self, vector: np.ndarray, eligible: np.ndarray, k: int
    ) -> tuple[list[tuple[str, float]], float | None]:
        """The ``k`` best eligible scripts, and the gap between the best one and the best
        eligible script with a different act (None when no other act is eligible)."""
        scores = np.where(eligible, self.script_scores(vector), -np.inf)
        count = min(k, int(eligible.sum()))
        if count == 0:
            return [], None
        part = np.argpartition(-scores, count - 1)[:count]
        order = part[np.argsort(-scores[part], kind="stable")]
        top = [(self.script_ids[i], float(scores[i])) for i in order]
        others = scores[self.acts != self.acts[order[0]]]
        rival = float(others.max()) if others.size and np.isfinite(others.max()) else None
        return top, None if rival is None else top[0][1] - rival
