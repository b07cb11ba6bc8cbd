"""Out-of-scope rejection: a confidence threshold and a top-two margin, kept apart from the model.

This is Rasa's FallbackClassifier (threshold 0.3, ambiguity margin 0.1 by default) applied to
temperature-calibrated probabilities, plus an explicit out-of-scope class when the training data
has one. The rule never alters the ranking, so an audit still sees what the model thought.
:func:`choose_rule` picks the two numbers on validation data only; :func:`sweep` is the table
behind ``salesbot intents eval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

OUT_OF_SCOPE = "out_of_scope"
DEFAULT_THRESHOLD = 0.3
DEFAULT_MARGIN = 0.1
THRESHOLD_GRID = tuple(round(float(t), 2) for t in np.arange(0.0, 0.96, 0.01))
MARGIN_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)


@dataclass(frozen=True)
class RejectionRule:
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN

    def reason(self, top_label: str, confidence: float, margin: float) -> str | None:
        """Why a prediction is out of scope (``oos_class``, ``threshold``, ``margin``), or None."""
        if top_label == OUT_OF_SCOPE:
            return "oos_class"
        if confidence < self.threshold:
            return "threshold"
        if margin < self.margin:
            return "margin"
        return None


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: index of the best class, its probability, and its lead over the runner-up."""
    probs = np.asarray(probs)
    if probs.shape[1] == 1:
        return np.zeros(len(probs), dtype=np.intp), probs[:, 0], probs[:, 0]
    part = np.partition(probs, -2, axis=1)
    best = probs.argmax(axis=1)
    return best, part[:, -1], part[:, -1] - part[:, -2]


def _tops(probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    best, confidence, margin = top_two(probs)
    return np.asarray(classes, dtype=object)[best], confidence, margin


def _rejected(
    labels: np.ndarray, confidence: np.ndarray, margin: np.ndarray, rule: RejectionRule
) -> np.ndarray:
    return (labels == OUT_OF_SCOPE) | (confidence < rule.threshold) | (margin < rule.margin)


@dataclass(frozen=True)
class SweepRow:
    threshold: float
    margin: float
    rejection_rate: float  # share of all examples sent out of scope
    accepted_accuracy: float  # accuracy on in-scope examples that were accepted
    in_scope_accuracy: float  # correct and accepted / all in-scope (Larson et al.'s accuracy)
    oos_recall: float  # out-of-scope examples rejected / all out-of-scope (nan without any)
    oos_precision: float  # OOS among the rejected (nan: nothing rejected, or no OOS data)


def score_rule(
    probs: np.ndarray, classes: Sequence[str], y_true: Sequence[str], rule: RejectionRule
) -> SweepRow:
    """Rejection rate and accuracies of one rule on labelled data."""
    return _score(_tops(probs, classes), np.asarray(y_true, dtype=object), rule)


def _score(
    tops: tuple[np.ndarray, np.ndarray, np.ndarray], truth: np.ndarray, rule: RejectionRule
) -> SweepRow:
    labels = tops[0]
    rejected = _rejected(*tops, rule)
    oos = truth == OUT_OF_SCOPE
    ins = ~oos
    correct = (labels == truth) & ~rejected & ins
    accepted_ins = ins & ~rejected
    return SweepRow(
        threshold=rule.threshold,
        margin=rule.margin,
        rejection_rate=_ratio(rejected.sum(), len(truth)),
        accepted_accuracy=_ratio(correct.sum(), accepted_ins.sum()),
        in_scope_accuracy=_ratio(correct.sum(), ins.sum()),
        oos_recall=_ratio((rejected & oos).sum(), oos.sum()),
        oos_precision=_ratio((rejected & oos).sum(), rejected.sum()) if oos.any() else math.nan,
    )


def sweep(
    probs: np.ndarray,
    classes: Sequence[str],
    y_true: Sequence[str],
    thresholds: Iterable[float] = THRESHOLD_GRID,
    margins: Iterable[float] = (0.0,),
) -> list[SweepRow]:
    """The rule scored at every (threshold, margin) pair: rejection rate against accuracy."""
    tops = _tops(probs, classes)
    truth = np.asarray(y_true, dtype=object)
    thresholds = list(thresholds)
    return [
        _score(tops, truth, RejectionRule(float(t), float(m))) for m in margins for t in thresholds
    ]


def choose_rule(
    probs: np.ndarray,
    classes: Sequence[str],
    y_true: Sequence[str],
    *,
    thresholds: Iterable[float] | None = None,
    margins: Iterable[float] | None = None,
    max_accuracy_drop: float = 0.01,
) -> tuple[RejectionRule, str]:
    """Pick threshold and margin on held-out data; returns (rule, ``"validation"``).

    The rule that rejects the most out-of-scope examples (without any: the most examples)
    among those that cost at most ``max_accuracy_drop`` of in-scope accuracy against accepting
    everything. A fixed cost is the operator's knob; maximising a sum of accuracy and recall
    instead lets 100 OOS validation examples outvote 3,000 in-scope ones (CLINC150). Ties go to
    the more accurate, then the more lenient rule.
    """
    truth = np.asarray(y_true, dtype=object)
    has_oos = bool((truth == OUT_OF_SCOPE).any())
    grid = sweep(
        probs,
        classes,
        truth,
        THRESHOLD_GRID if thresholds is None else thresholds,
        MARGIN_GRID if margins is None else margins,
    )
    baseline = score_rule(probs, classes, truth, RejectionRule(0.0, 0.0)).in_scope_accuracy
    floor = baseline - max_accuracy_drop - 1e-9
    allowed = [r for r in grid if not r.in_scope_accuracy < floor] or grid[:1]

    def key(row: SweepRow) -> tuple[float, float, float, float]:
        gain = row.oos_recall if has_oos else row.rejection_rate
        return (round(gain, 9), round(row.in_scope_accuracy, 9), -row.threshold, -row.margin)

    best = max(allowed, key=key)
    return RejectionRule(best.threshold, best.margin), "validation"


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")
