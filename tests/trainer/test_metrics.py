"""Metrics against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dermserve.trainer.class_weights import balanced_class_weights, sample_weights
from dermserve.trainer.metrics import (
    average_ranks,
    balanced_accuracy,
    binary_auc,
    bootstrap_interval,
    confusion_matrix,
    expected_calibration_error,
    lesion_bootstrap_indices,
    macro_auc,
    macro_f1,
    per_class,
    roc_curve,
    sensitivity_specificity,
    threshold_for_sensitivity,
)

Y = np.array([0, 0, 1, 1, 2])
PREDICTED = np.array([0, 1, 1, 1, 0])


def test_confusion_matrix_and_per_class_scores() -> None:
    matrix = confusion_matrix(Y, PREDICTED, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores = per_class(matrix)
    np.testing.assert_allclose(scores.recall, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(scores.precision, [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(scores.f1, [0.5, 0.8, 0.0])
    assert scores.support.tolist() == [2, 2, 1]


def test_balanced_accuracy_and_macro_f1() -> None:
    assert balanced_accuracy(Y, PREDICTED, 3) == pytest.approx(0.5)
    assert macro_f1(Y, PREDICTED, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a class absent from truth and prediction does not dilute either mean
    assert balanced_accuracy(Y, PREDICTED, 5) == pytest.approx(0.5)
    assert macro_f1(Y, PREDICTED, 5) == pytest.approx(1.3 / 3)


def test_ranks_share_ties() -> None:
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_binary_auc_by_hand() -> None:
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # pairs: 0.5>0.2, 0.5=0.5 (half), 0.9>0.2, 0.9>0.5 -> 3.5 / 4
    assert binary_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1])) == 0.875
    assert binary_auc(np.full(4, 0.5), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(binary_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_roc_curve_area_matches_the_rank_auc() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=200), 1)  # many ties
    positive = rng.uniform(size=200) < scores
    fpr, tpr = roc_curve(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(binary_auc(scores, positive))


def test_macro_auc_skips_absent_classes() -> None:
    probabilities = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    # class 0: positives {0.8, 0.6} vs {0.3} -> 1; class 1: {0.6} vs {0.1, 0.3} -> 1; class 2 absent
    assert macro_auc(np.array([0, 1, 0]), probabilities) == 1.0


def test_expected_calibration_error_by_hand() -> None:
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.65, 0.35]])
    y = np.array([0, 1, 0])
    # bin of 0.9: accuracy 0.5, confidence 0.9, 2/3 of images; bin of 0.65: 1 vs 0.65, 1/3
    expected = 2 / 3 * 0.4 + 1 / 3 * 0.35
    assert expected_calibration_error(y, probabilities) == pytest.approx(expected)
    assert expected_calibration_error(np.array([0, 0]), np.array([[1.0, 0.0]] * 2)) == 0.0


def test_sensitivity_specificity_and_operating_threshold() -> None:
    positive = np.array([1, 1, 1, 1, 0, 0])
    flagged = np.array([1, 1, 1, 0, 1, 0])
    assert sensitivity_specificity(positive, flagged) == (0.75, 0.5)
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.5, 0.1])
    assert threshold_for_sensitivity(scores, positive, 0.75) == 0.3
    assert threshold_for_sensitivity(scores, positive, 1.0) == 0.2


def test_bootstrap_resamples_whole_lesions() -> None:
    groups = ["a", "a", "b", "c", "c", "c"]
    for index in lesion_bootstrap_indices(groups, samples=20, seed=0):
        drawn = np.bincount(index, minlength=6)
        assert drawn[0] == drawn[1] and drawn[3] == drawn[4] == drawn[5]
        assert len(set(np.asarray(groups)[index])) >= 1


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probabilities = np.eye(3)[np.where(rng.uniform(size=300) < 0.7, y, (y + 1) % 3)]
    groups = [str(i // 2) for i in range(300)]

    def accuracy(y: np.ndarray, p: np.ndarray) -> float:
        return float((p.argmax(1) == y).mean())

    resamples = lesion_bootstrap_indices(groups, samples=200, seed=2)
    low, high = bootstrap_interval(accuracy, y, probabilities, resamples)
    assert low < accuracy(y, probabilities) < high
    assert 0.05 < high - low < 0.2


def test_balanced_class_weights() -> None:
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    # n / (K * n_k) = 10 / (4 * n_k); class 3 is absent
    np.testing.assert_allclose(balanced_class_weights(y, 4), [10 / 24, 10 / 12, 10 / 4, 0])
    weights = sample_weights(y, balanced_class_weights(y, 4))
    # every present class carries the same total weight
    assert [weights[y == k].sum() for k in range(3)] == pytest.approx([2.5] * 3)
