"""What ``salesbot intents eval`` measures, as data: accuracy, out-of-scope rejection,
calibration, confusions and a threshold sweep, plus the sweep plot.

Definitions follow Larson et al. (2019), so the numbers sit beside their Table 2: *in-scope
accuracy* counts an in-scope query as right only when it is accepted with the right intent (a
rejection is an error); *OOS recall* is the share of out-of-scope queries rejected.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from intents.calibration import expected_calibration_error, scaled_softmax
from intents.classifier import IntentClassifier
from intents.rejection import OUT_OF_SCOPE, RejectionRule, SweepRow, score_rule, sweep

SWEEP_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 0.91, 0.1))
PLOT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 0.991, 0.01))


@dataclass(frozen=True)
class Report:
    n_test: int
    n_oos: int
    rule: RejectionRule
    rule_source: str
    temperature: float
    in_scope_accuracy: float  # accepted with the right intent / in-scope
    top1_accuracy: float  # top-ranked intent right / in-scope, ignoring the rule
    oos_recall: float
    oos_precision: float
    macro_f1: float  # over every label, out_of_scope included when present
    ece_raw: float  # on the test set, temperature 1 (the linear model's own softmax)
    ece_calibrated: float  # with the fitted temperature
    confused: list[tuple[str, str, int]]  # (true, predicted top-1, count), most frequent first
    sweep: list[SweepRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rule"] = asdict(self.rule)
        return _finite(data)


def evaluate(model: IntentClassifier, texts: Sequence[str], labels: Sequence[str]) -> Report:
    """Score a trained classifier on labelled test data (``out_of_scope`` labels allowed)."""
    truth = np.asarray(list(labels), dtype=object)
    logits = model.decision_function(list(texts))
    probs = scaled_softmax(logits, model.temperature_)
    classes = np.asarray(model.classes_, dtype=object)
    predictions = model.predict_many(list(texts))
    predicted = np.asarray([p.intent for p in predictions], dtype=object)
    top1 = classes[probs.argmax(axis=1)]

    in_scope = truth != OUT_OF_SCOPE
    chosen = score_rule(probs, classes, truth, model.rule_)
    known = np.isin(truth, classes)
    index = np.searchsorted(classes, truth[known].astype(str))
    raw = scaled_softmax(logits[known], 1.0)
    calibrated = probs[known]
    confused = Counter(
        (str(t), str(p)) for t, p in zip(truth[in_scope], top1[in_scope], strict=True) if t != p
    )
    return Report(
        n_test=len(truth),
        n_oos=int((~in_scope).sum()),
        rule=model.rule_,
        rule_source=model.rule_source_,
        temperature=float(model.temperature_),
        in_scope_accuracy=chosen.in_scope_accuracy,
        top1_accuracy=float((top1[in_scope] == truth[in_scope]).mean())
        if in_scope.any()
        else math.nan,
        oos_recall=chosen.oos_recall,
        oos_precision=chosen.oos_precision,
        macro_f1=float(
            f1_score(truth.astype(str), predicted.astype(str), average="macro", zero_division=0)
        ),
        ece_raw=_ece(raw, index),
        ece_calibrated=_ece(calibrated, index),
        confused=[(t, p, n) for (t, p), n in confused.most_common(10)],
        sweep=sweep(probs, classes, truth, SWEEP_THRESHOLDS, (model.rule_.margin,)),
    )


def _ece(probs: np.ndarray, index: np.ndarray) -> float:
    if len(index) == 0:
        return math.nan
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == index)


def _finite(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def plot_sweep(
    model: IntentClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Save the threshold sweep as a PNG: accuracy and OOS recall against threshold, and
    accuracy of accepted turns against the rejection rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = model.predict_proba(list(texts))
    rows = sweep(probs, model.classes_, labels, PLOT_THRESHOLDS, (model.rule_.margin,))
    thresholds = [r.threshold for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(thresholds, [r.in_scope_accuracy for r in rows], label="in-scope accuracy")
    left.plot(thresholds, [r.accepted_accuracy for r in rows], label="accuracy of accepted")
    if any(label == OUT_OF_SCOPE for label in labels):
        left.plot(thresholds, [r.oos_recall for r in rows], label="OOS recall")
        left.plot(thresholds, [r.oos_precision for r in rows], label="OOS precision", ls=":")
    left.axvline(model.rule_.threshold, color="grey", ls="--", label="chosen threshold")
    left.set_xlabel(f"confidence threshold (margin {model.rule_.margin:g})")
    left.set_ylim(0, 1.01)
    left.legend(loc="lower left", fontsize=8)
    left.grid(alpha=0.3)
    right.plot([r.rejection_rate for r in rows], [r.accepted_accuracy for r in rows])
    right.set_xlabel("rejection rate (share sent out of scope)")
    right.set_ylabel("accuracy of accepted in-scope turns")
    right.grid(alpha=0.3)
    fig.suptitle(title or "intent classifier: threshold sweep")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
