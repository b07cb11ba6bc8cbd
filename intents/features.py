"""Text features that work without word segmentation.

Character n-grams carry most of the signal for short, noisy phone utterances (typos, "yeah",
"yep", "yup" share n-grams) and need no tokenizer, so they work for Chinese as-is. Word n-grams add
phrase-level cues for languages written with spaces.
"""

from __future__ import annotations

import re
import unicodedata

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

UNSEGMENTED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MAX_CLASSIFIED_CHARS = 1000


def normalise(text: str) -> str:
    """NFKC-fold, drop control characters and cap the length, so any input is classifiable."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())[:MAX_CLASSIFIED_CHARS].lower()


def build_features(language: str) -> FeatureUnion:
    base = language.split("-")[0].lower()
    char = TfidfVectorizer(
        analyzer="char_wb" if base not in UNSEGMENTED_LANGUAGES else "char",
        ngram_range=(1, 4) if base in UNSEGMENTED_LANGUAGES else (2, 5),
        sublinear_tf=True,
        min_df=1,
    )
    if base in UNSEGMENTED_LANGUAGES:
        return FeatureUnion([("char", char)])
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    return FeatureUnion([("char", char), ("word", word)])
