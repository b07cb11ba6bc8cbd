"""TF-IDF n-grams + logistic regression, with an out-of-scope rule kept separate from the model.

The estimator follows scikit-learn's conventions (``__init__`` stores parameters, ``fit`` returns
self, learned attributes end in ``_``), so it can be cross-validated and cloned. The out-of-scope
rule (Rasa's FallbackClassifier: confidence threshold and top-two margin) is applied on top of the
ranking, which is always kept so that audits can see what the model thought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from intents.features import build_features, normalise

OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class IntentPrediction:
    intent: str  # the accepted intent, or "out_of_scope"
    confidence: float  # probability of the top-ranked intent
    margin: float  # top-1 minus top-2 probability
    ranking: tuple[tuple[str, float], ...]  # top intents, best first
    rejected_by: str | None = None  # "threshold" | "margin" | "empty" when out of scope

    @property
    def top_intent(self) -> str:
        return self.ranking[0][0] if self.ranking else OUT_OF_SCOPE


class IntentClassifier(ClassifierMixin, BaseEstimator):
    """Intent classifier over character (and, where words are spaced, word) n-grams."""

    def __init__(
        self,
        language: str = "en",
        C: float = 20.0,
        threshold: float = 0.3,
        margin: float = 0.1,
        random_state: int = 0,
    ):
        self.language = language
        self.C = C
        self.threshold = threshold
        self.margin = margin
        self.random_state = random_state

    def fit(self, X: Sequence[str], y: Sequence[str]) -> IntentClassifier:
        if len(X) != len(y):
            raise ValueError(f"{len(X)} texts but {len(y)} labels")
        if len(set(y)) < 2:
            raise ValueError("need at least two intents to train a classifier")
        self.features_ = build_features(self.language)
        matrix = self.features_.fit_transform([normalise(t) for t in X])
        self.model_ = LogisticRegression(
            C=self.C, max_iter=5000, random_state=self.random_state
        ).fit(matrix, list(y))
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(self.features_.transform([normalise(t) for t in X]))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return np.array([p.intent for p in self.predict_many(X)])

    def predict_many(self, X: Sequence[str], top_k: int = 5) -> list[IntentPrediction]:
        texts = list(X)
        probs = self.predict_proba(texts)
        return [self._decide(text, row, top_k) for text, row in zip(texts, probs, strict=True)]

    def predict_one(self, text: str, top_k: int = 5) -> IntentPrediction:
        return self.predict_many([text], top_k)[0]

    def _decide(self, text: str, row: np.ndarray, top_k: int) -> IntentPrediction:
        order = np.argsort(row)[::-1]
        ranking = tuple((str(self.classes_[i]), float(row[i])) for i in order[:top_k])
        confidence = ranking[0][1]
        margin = confidence - (ranking[1][1] if len(ranking) > 1 else 0.0)
        if not normalise(text).strip():
            rejected = "empty"
        elif confidence < self.threshold:
            rejected = "threshold"
        elif margin < self.margin:
            rejected = "margin"
        else:
            rejected = None
        intent = OUT_OF_SCOPE if rejected else ranking[0][0]
        return IntentPrediction(intent, confidence, margin, ranking, rejected)
