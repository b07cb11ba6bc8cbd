"""Temperature scaling and expected calibration error.

A linear model's softmax is badly spread: logistic regression on many sparse n-grams is too
peaked, a weakly regularised one on few examples too flat. One scalar temperature T, fitted on
held-out logits by minimising the negative log-likelihood (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017), fixes the spread without changing the ranking, so a confidence
threshold of 0.5 then means "right about half the time".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
_LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: wide enough for any linear model's logits


def scaled_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The temperature that minimises the NLL of ``labels`` (column indices) under the logits.

    A one-dimensional bounded search on log T: the NLL is smooth and unimodal in T, so Brent's
    method converges in a few dozen evaluations, even for thousands of rows.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.intp)
    if len(labels) == 0:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: the bin-weighted gap between mean confidence and accuracy (equal-width bins)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return 0.0
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(total)
