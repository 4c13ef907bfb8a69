"""Classification metrics in numpy (no scikit-learn): every function loops over the class list.

`y` are class indices [N]; `probabilities` are [N, K] rows summing to one; `groups` are the lesion
ids used to resample whole lesions in the bootstrap (images of one lesion are not independent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_ECE_BINS = 15  # equal-width confidence bins, the common choice (Guo et al., 2017)
DEFAULT_BOOTSTRAP_SAMPLES = 1000  # resamples for the 95% intervals: +-0.01 on the bounds
DEFAULT_CONFIDENCE_LEVEL = 0.95

MetricFn = Callable[[np.ndarray, np.ndarray], float]
"""A metric of (y, probabilities) -> float, as the bootstrap resamples it."""


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [K, K]: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y), np.asarray(predicted)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    result = np.zeros(np.shape(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=np.asarray(denominator) > 0)
    return result


@dataclass(frozen=True)
class PerClass:
    """Per-class precision, recall, F1 and support, each [K]."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def per_class(matrix: np.ndarray) -> PerClass:
    """Precision, recall and F1 of each class from a confusion matrix."""
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return PerClass(precision, recall, f1, support)


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `y` (ISIC 2018's metric)."""
    scores = per_class(confusion_matrix(y, predicted, num_classes))
    present = scores.support > 0
    return float(scores.recall[present].mean()) if present.any() else float("nan")


def macro_f1(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur as truth or prediction."""
    matrix = confusion_matrix(y, predicted, num_classes)
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(per_class(matrix).f1[present].mean()) if present.any() else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((first + last + 1) / 2.0)[group]
    return ranks


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney rank sum (ties count one half); nan without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest_auc(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """ROC-AUC of each class against the rest, [K] (nan for a class absent from `y`)."""
    return np.array([binary_auc(probabilities[:, k], y == k)
                     for k in range(probabilities.shape[1])])


def macro_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present in `y`."""
    aucs = one_vs_rest_auc(y, probabilities)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    sorted_scores, hits = np.asarray(scores)[order], positive[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tps, fps = np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
    tpr = _safe_divide(np.r_[0, tps], np.full(len(tps) + 1, hits.sum()))
    fpr = _safe_divide(np.r_[0, fps], np.full(len(fps) + 1, (~hits).sum()))
    return fpr, tpr


def sensitivity_specificity(positive: np.ndarray, flagged: np.ndarray) -> tuple[float, float]:
    """Sensitivity (flagged among positives) and specificity (unflagged among negatives)."""
    positive, flagged = np.asarray(positive, bool), np.asarray(flagged, bool)
    sensitivity = flagged[positive].mean() if positive.any() else float("nan")
    specificity = (~flagged[~positive]).mean() if (~positive).any() else float("nan")
    return float(sensitivity), float(specificity)


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold t with sensitivity(scores >= t) >= target (chosen on validation)."""
    positive_scores = np.sort(np.asarray(scores)[np.asarray(positive, bool)])[::-1]
    if len(positive_scores) == 0:
        return 0.5
    needed = max(1, int(np.ceil(target * len(positive_scores))))
    return float(positive_scores[needed - 1])


@dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, accuracy and count of the top-label predictions."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability(y: np.ndarray, probabilities: np.ndarray,
                bins: int = DEFAULT_ECE_BINS) -> Reliability:
    """Bin the top-label confidences into `bins` equal-width bins over (0, 1]."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    mean_confidence = _safe_divide(np.bincount(index, confidence, bins), count)
    accuracy = _safe_divide(np.bincount(index, correct, bins), count)
    return Reliability(edges, mean_confidence, accuracy, count.astype(np.int64))


def expected_calibration_error(y: np.ndarray, probabilities: np.ndarray,
                               bins: int = DEFAULT_ECE_BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of the images."""
    table = reliability(y, probabilities, bins)
    if table.count.sum() == 0:
        return float("nan")
    gap = np.abs(table.accuracy - table.confidence)
    return float((gap * table.count).sum() / table.count.sum())


def lesion_bootstrap_indices(groups: Sequence[str], samples: int,
                             seed: int) -> list[np.ndarray]:
    """`samples` index arrays, each drawing whole lesions (groups) with replacement."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
            for _ in range(samples)]


def bootstrap_interval(metric: MetricFn, y: np.ndarray, probabilities: np.ndarray,
                       resamples: Sequence[np.ndarray],
                       level: float = DEFAULT_CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Percentile interval of `metric` over the resamples (nan results are dropped)."""
    values = np.array([metric(y[index], probabilities[index]) for index in resamples])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
