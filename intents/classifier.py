"""The intent classifier: n-gram (and optionally sentence-embedding) features, a linear SVM,
temperature-scaled probabilities, and an out-of-scope rule kept separate from the model.

The estimator follows scikit-learn's conventions (``__init__`` stores parameters, ``fit``
validates them and returns self, learned attributes end in ``_``), so it can be cloned and
cross-validated. Why these parts:

* ``LinearSVC`` (one-vs-rest, squared hinge) trains 10-20x faster than multinomial logistic
  regression on 150 intents and rejects out-of-scope text better once calibrated (CLINC150
  validation split; see docs/benchmarks.md);
* its scores are turned into probabilities by a softmax with one temperature fitted on held-out
  data (explicit validation data, else out-of-fold predictions), so a 0.3 threshold is a 30 %
  chance of being right, whatever the data set size;
* the out-of-scope rule (:mod:`intents.rejection`) is applied on top of the ranking, which is
  always kept so that audits can see what the model thought. Training examples labelled
  ``out_of_scope`` make an explicit class; its win is a rejection too.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from intents.calibration import expected_calibration_error, fit_temperature, scaled_softmax
from intents.features import MODELS, build_features, normalise
from intents.rejection import (
    DEFAULT_MARGIN,
    DEFAULT_THRESHOLD,
    OUT_OF_SCOPE,
    RejectionRule,
    choose_rule,
    top_two,
)

AUTO = "auto"


@dataclass(frozen=True)
class IntentPrediction:
    intent: str  # the accepted intent, or "out_of_scope"
    confidence: float  # calibrated probability of the top-ranked label
    margin: float  # top-1 minus top-2 probability
    ranking: tuple[tuple[str, float], ...]  # top labels, best first
    rejected_by: str | None = None  # "empty" | "oos_class" | "threshold" | "margin"

    @property
    def top_intent(self) -> str:
        return self.ranking[0][0] if self.ranking else OUT_OF_SCOPE


class IntentClassifier(ClassifierMixin, BaseEstimator):
    """Intent classifier; ``model`` is ``"tfidf"`` (fast default) or ``"tfidf+minilm"``.

    ``threshold`` and ``margin`` are numbers, or ``"auto"``: chosen on held-out predictions as
    the rule that rejects the most out-of-scope text (without out-of-scope examples: the most
    text) while costing at most ``max_accuracy_drop`` of in-scope accuracy. ``calibrate=False``
    keeps the SVM's raw softmax, which is nearly uniform: only for threshold-free use.
    """

    def __init__(
        self,
        language: str = "en",
        model: str = "tfidf",
        C: float = 0.5,
        threshold: float | str = 0.3,
        margin: float | str = 0.1,
        calibrate: bool = True,
        max_accuracy_drop: float = 0.01,
        embedding_weight: float = 1.0,
        cv: int = 5,
        random_state: int = 0,
    ):
        self.language = language
        self.model = model
        self.C = C
        self.threshold = threshold
        self.margin = margin
        self.calibrate = calibrate
        self.max_accuracy_drop = max_accuracy_drop
        self.embedding_weight = embedding_weight
        self.cv = cv
        self.random_state = random_state

    # -- training ------------------------------------------------------------------------------

    def fit(
        self,
        X: Sequence[str],
        y: Sequence[str],
        X_val: Sequence[str] | None = None,
        y_val: Sequence[str] | None = None,
    ) -> IntentClassifier:
        """Train; calibrate and choose the rule on (X_val, y_val), else on out-of-fold scores."""
        self._validate_params()
        texts = [normalise(t) for t in X]
        labels = np.asarray(list(y), dtype=object)
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if len(set(labels)) < 2:
            raise ValueError("need at least two intents to train a classifier")
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")

        self.features_, self.model_ = self._fit_parts(texts, labels)
        self.classes_ = self.model_.classes_
        self.has_oos_class_ = OUT_OF_SCOPE in set(self.classes_)

        if X_val is not None:
            held_logits = self.decision_function(list(X_val))
            held_labels = np.asarray(list(y_val), dtype=object)
            self.held_out_ = "validation"
        else:
            held_logits, held_labels = self._out_of_fold(texts, labels)
            self.held_out_ = "out_of_fold" if held_logits is not None else "none"

        self.temperature_ = 1.0
        self.calibration_: dict[str, float] = {}
        probs = None
        if held_logits is not None:
            self._calibrate(held_logits, held_labels)
            probs = scaled_softmax(held_logits, self.temperature_)
        self._choose_rule(probs, held_labels)
        return self

    def _validate_params(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("threshold", "margin"):
            value = getattr(self, name)
            if value != AUTO and not (isinstance(value, numbers.Real) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a number in [0, 1] or 'auto', got {value!r}")
        if not (isinstance(self.C, numbers.Real) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}")
        if not (isinstance(self.cv, numbers.Integral) and self.cv >= 2):
            raise ValueError(f"cv must be an integer >= 2, got {self.cv!r}")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")

    def _fit_parts(self, texts: list[str], labels: np.ndarray) -> tuple[Any, LinearSVC]:
        features = build_features(self.language, self.model, self.embedding_weight)
        matrix = features.fit_transform(texts)
        svm = LinearSVC(C=self.C, max_iter=10_000, random_state=self.random_state)
        return features, svm.fit(matrix, labels)

    def _out_of_fold(
        self, texts: list[str], labels: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Scores for every example from a model that did not see it (stratified k-fold)."""
        needs_held_out = self.calibrate or AUTO in (self.threshold, self.margin)
        _, counts = np.unique(labels, return_counts=True)
        folds = min(self.cv, int(counts.min()))
        if not needs_held_out or folds < 2:
            return None, labels
        logits = np.zeros((len(texts), len(self.classes_)))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
        for train, test in splitter.split(texts, labels):
            features, svm = self._fit_parts([texts[i] for i in train], labels[train])
            scores = _as_2d(svm.decision_function(features.transform([texts[i] for i in test])))
            columns = np.searchsorted(self.classes_, svm.classes_)
            fold_logits = np.full((len(test), len(self.classes_)), scores.min() - 10.0)
            fold_logits[:, columns] = scores
            logits[test] = fold_logits
        return logits, labels

    def _calibrate(self, logits: np.ndarray, labels: np.ndarray) -> None:
        known = np.isin(labels, self.classes_)  # OOS rows have no column without an OOS class
        if not known.any():
            return
        index = np.searchsorted(self.classes_, labels[known].astype(str))
        before = scaled_softmax(logits[known], 1.0)
        if self.calibrate:
            self.temperature_ = fit_temperature(logits[known], index)
        after = scaled_softmax(logits[known], self.temperature_)
        self.calibration_ = {
            "ece_before": _ece(before, index),
            "ece_after": _ece(after, index),
            "n": float(known.sum()),
        }

    def _choose_rule(self, probs: np.ndarray | None, labels: np.ndarray) -> None:
        fixed_t = None if self.threshold == AUTO else float(self.threshold)
        fixed_m = None if self.margin == AUTO else float(self.margin)
        default = RejectionRule(
            DEFAULT_THRESHOLD if fixed_t is None else fixed_t,
            DEFAULT_MARGIN if fixed_m is None else fixed_m,
        )
        if probs is None or (fixed_t is not None and fixed_m is not None):
            rule, source = default, "configured"
        else:
            rule, source = choose_rule(
                probs,
                self.classes_,
                labels,
                thresholds=None if fixed_t is None else (fixed_t,),
                margins=None if fixed_m is None else (fixed_m,),
                max_accuracy_drop=self.max_accuracy_drop,
            )
        self.rule_ = rule
        self.rule_source_ = source

    # -- serialisation -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Store each TF-IDF vocabulary as two arrays instead of a dict.

        skops writes a dict node by node into its JSON schema (9 MB and 0.8 s to load for a
        20-intent flow); two numpy arrays are a few hundred KB and load in milliseconds.
        """
        state = super().__getstate__()
        state.pop("_fast_", None)  # derived at run time, never stored
        union = state.get("features_")
        if union is None:
            return state
        union = copy.copy(union)
        parts, vocabularies = [], {}
        for name, part in union.transformer_list:
            if isinstance(getattr(part, "vocabulary_", None), dict):
                part = copy.copy(part)
                terms = np.array(list(part.vocabulary_), dtype=str)
                columns = np.fromiter(part.vocabulary_.values(), dtype=np.int64, count=len(terms))
                vocabularies[name] = (terms, columns)
                del part.vocabulary_
            parts.append((name, part))
        union.transformer_list = parts
        return {**state, "features_": union, "vocabularies_": vocabularies}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vocabularies = state.pop("vocabularies_", {})
        super().__setstate__(state)
        for name, part in getattr(self, "features_", FeatureUnion([])).transformer_list:
            if name in vocabularies:
                terms, columns = vocabularies[name]
                part.vocabulary_ = dict(zip(terms.tolist(), columns.tolist(), strict=True))

    # -- prediction ----------------------------------------------------------------------------

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        """Raw linear scores, one column per class (``classes_`` order).

        The same arithmetic as ``FeatureUnion.transform`` + ``LinearSVC.decision_function``,
        without their per-call input validation and joblib dispatch, which cost more than the
        maths for one short utterance (the p99 <= 2 ms budget of docs/benchmarks.md).
        """
        check_is_fitted(self, "model_")
        texts = [normalise(t) for t in X]
        fast = self._fast_scorer() if len(texts) <= FAST_PATH_MAX_TEXTS else None
        if fast is not None:
            scores = np.vstack([fast(text) for text in texts])
            return _as_2d(scores.ravel() if scores.shape[1] == 1 else scores)
        with config_context(assume_finite=True, skip_parameter_validation=True):
            blocks = [part.transform(texts) for _, part in self.features_.transformer_list]
        matrix = sparse.hstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
        scores = matrix @ self.model_.coef_.T + self.model_.intercept_
        return _as_2d(np.asarray(scores).ravel() if scores.shape[1] == 1 else scores)

    def _fast_scorer(self) -> Any:
        """A function text -> raw scores for a few texts, or None where it does not apply.

        For every part a plain TF-IDF vectorizer (the ``tfidf`` model), the scores of one text
        are the TF-IDF weights of its n-grams times the matching columns of the SVM's
        coefficients: a few dozen dictionary lookups and one small dense product, instead of
        building sparse matrices (0.2 ms instead of ~1 ms per utterance). Same arithmetic as
        ``TfidfVectorizer.transform`` (raw counts, optional ``1 + log`` tf, idf, l2 norm) in
        float64; only the order of the sums differs.
        """
        model, features = self.model_, self.features_
        cached = getattr(self, "_fast_", None)
        if cached is not None and cached[0] is model and cached[1] is features:
            return cached[2]
        scorer = _build_fast_scorer(features, model)
        self._fast_ = (model, features, scorer)
        return scorer

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Temperature-calibrated class probabilities (``classes_`` order)."""
        return scaled_softmax(self.decision_function(X), self.temperature_)

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """Accepted intent per text, ``out_of_scope`` where the rule rejects it."""
        return np.array([p.intent for p in self.predict_many(X)], dtype=object)

    def predict_many(self, X: Sequence[str], top_k: int = 5) -> list[IntentPrediction]:
        texts = [t if isinstance(t, str) else "" for t in X]
        if not texts:
            return []
        probs = self.predict_proba(texts)
        best, confidence, margin = top_two(probs)
        order = np.argsort(-probs, axis=1)[:, :top_k]
        out = []
        for i, text in enumerate(texts):
            ranking = tuple((str(self.classes_[j]), float(probs[i, j])) for j in order[i])
            top = str(self.classes_[best[i]])
            if not normalise(text):
                rejected = "empty"
            else:
                rejected = self.rule_.reason(top, float(confidence[i]), float(margin[i]))
            intent = OUT_OF_SCOPE if rejected else top
            out.append(
                IntentPrediction(intent, float(confidence[i]), float(margin[i]), ranking, rejected)
            )
        return out

    def predict_one(self, text: str, top_k: int = 5) -> IntentPrediction:
        return self.predict_many([text], top_k)[0]


FAST_PATH_MAX_TEXTS = 4  # batches above this go through the sparse matrices


def _build_fast_scorer(features: Any, model: Any) -> Any:
    parts = []
    offset = 0
    for _, part in getattr(features, "transformer_list", ()):
        if (
            type(part) is not TfidfVectorizer
            or part.binary
            or part.norm != "l2"
            or not part.use_idf
            or np.dtype(part.dtype) != np.float64
        ):
            return None
        vocabulary = part.vocabulary_
        parts.append((part.build_analyzer(), vocabulary, part.idf_, part.sublinear_tf, offset))
        offset += len(vocabulary)
    if not parts or getattr(features, "transformer_weights", None):
        return None
    coef_t = np.ascontiguousarray(np.asarray(model.coef_, dtype=np.float64).T)
    if coef_t.shape[0] != offset:
        return None
    intercept = np.asarray(model.intercept_, dtype=np.float64)

    def score(text: str) -> np.ndarray:
        columns: list[int] = []
        weights: list[float] = []
        for analyse, vocabulary, idf, sublinear, start in parts:
            counts: dict[int, int] = {}
            for gram in analyse(text):
                j = vocabulary.get(gram)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            tf = [(1.0 + math.log(c)) if sublinear else float(c) for c in counts.values()]
            w = np.asarray(tf) * idf[list(counts)]
            w /= math.sqrt(float(w @ w))
            columns.extend(start + j for j in counts)
            weights.extend(w.tolist())
        if not columns:
            return intercept.copy()
        return np.asarray(weights) @ coef_t[columns] + intercept

    return score


def _as_2d(scores: np.ndarray) -> np.ndarray:
    """Binary LinearSVC returns one column (the second class's score); make it two."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return np.column_stack([np.zeros_like(scores), scores])
    return scores


def _ece(probs: np.ndarray, index: np.ndarray) -> float:
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == index)
