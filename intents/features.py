"""Text features that work without word segmentation.

Character n-grams carry most of the signal for short, noisy phone utterances (typos, "yeah",
"yep", "yup" share n-grams) and need no tokenizer, so they work for Chinese as-is. Word n-grams add
phrase-level cues for languages written with spaces. Model ``tfidf+minilm`` appends a sentence
embedding, which knows that "cancel my card" and "block my card" are close although they share
few n-grams.
"""

from __future__ import annotations

import re
import unicodedata

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

UNSEGMENTED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})
MODELS = ("tfidf", "tfidf+minilm")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
MAX_CLASSIFIED_CHARS = 1000


def normalise(text: str) -> str:
    """NFKC-fold, drop control characters and lone surrogates, cap the length: any input works."""
    text = unicodedata.normalize("NFKC", _LONE_SURROGATE.sub(" ", str(text)))
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())[:MAX_CLASSIFIED_CHARS].lower()


def is_unsegmented(language: str) -> bool:
    return language.split("-")[0].lower() in UNSEGMENTED_LANGUAGES


def build_features(
    language: str, model: str = "tfidf", embedding_weight: float = 1.0
) -> FeatureUnion:
    """The feature union for a language and model name (see :data:`MODELS`)."""
    if model not in MODELS:
        raise ValueError(f"unknown intent model {model!r} (known: {', '.join(MODELS)})")
    unsegmented = is_unsegmented(language)
    parts: list[tuple[str, object]] = [
        (
            "char",
            TfidfVectorizer(
                analyzer="char" if unsegmented else "char_wb",
                ngram_range=(1, 4) if unsegmented else (2, 5),
                sublinear_tf=True,
            ),
        )
    ]
    if not unsegmented:
        parts.append(
            (
                "word",
                TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
            )
        )
    if model == "tfidf+minilm":
        from intents.embeddings import EmbeddingFeatures

        parts.append(("minilm", EmbeddingFeatures("minilm", embedding_weight)))
    return FeatureUnion(parts)
