"""Temperature scaling, OOD feature statistics and abstention thresholds (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermserve.core.model_config import AbstentionRule
from dermserve.trainer.abstention import (
    check_sanity,
    choose_rule,
    noise_images,
    sanity_images,
    selective_summary,
)
from dermserve.trainer.calibration import (
    calibrate,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from dermserve.trainer.features import FeatureStatistics
from dermserve.trainer.metrics import expected_calibration_error


def overconfident_logits(n: int = 3000, classes: int = 4, seed: int = 0,
                         scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true temperature is `scale`: sampling y from softmax(z) then multiplying z
    by `scale` makes the network over-confident by exactly that factor."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(0, 1.5, (n, classes))
    p = softmax(calibrated)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return calibrated * scale, y


def test_temperature_recovers_overconfidence_and_lowers_ece() -> None:
    logits, y = overconfident_logits()
    result = calibrate(logits, y)
    assert result.temperature > 1
    assert result.temperature == pytest.approx(4.0, rel=0.15)
    assert result.ece_after < result.ece_before / 2
    assert result.nll_after < result.nll_before


def test_temperature_is_the_nll_minimum() -> None:
    logits, y = overconfident_logits(n=500, scale=0.5, seed=1)
    t = fit_temperature(logits, y)
    assert t < 1  # under-confident logits get sharpened
    best = negative_log_likelihood(logits, y, t)
    for nearby in (t * 0.95, t * 1.05):
        assert negative_log_likelihood(logits, y, nearby) > best


def test_softmax_rows_sum_to_one_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0], [0.0, -1000.0]]), temperature=2.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert expected_calibration_error(np.array([0, 0]), p) == pytest.approx(0.0)


def _clusters(seed: int = 0, n: int = 400, dims: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 5, (3, dims))
    return centres[labels] + rng.normal(0, 1, (n, dims)), labels


def test_ood_scores_separate_far_points_and_pca_keeps_them_apart() -> None:
    features, labels = _clusters()
    held_out, _ = _clusters(seed=0, n=100)
    far = np.random.default_rng(9).normal(0, 1, (20, 20)) + 40
    for components in (None, 5):
        stats = FeatureStatistics.fit(features, labels, 3, components=components)
        assert stats.ood_scores(far).min() > np.quantile(stats.ood_scores(held_out), 0.99)
    projected = FeatureStatistics.fit(features, labels, 3, components=5)
    assert projected.projection is not None and projected.projection.shape == (20, 5)
    assert projected.precision.shape == (5, 5)


def test_residual_term_catches_points_off_the_subspace() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 600)
    centres = np.zeros((3, 20))
    centres[:, :4] = rng.normal(0, 6, (3, 4))  # the classes differ in 4 directions only
    features = centres[labels] + rng.normal(0, 1, (600, 20)) * np.r_[np.ones(4), 0.3 * np.ones(16)]
    stats = FeatureStatistics.fit(features, labels, 3, components=4)
    held_out = stats.ood_scores(centres[labels[:200]] + rng.normal(0, 1, (200, 20)) * 0.3)
    off = centres[:1] + np.r_[np.zeros(4), 3 * np.ones(16)]  # at a class mean, off the subspace
    subspace_only = FeatureStatistics(stats.class_means, stats.precision, stats.centre,
                                      stats.projection)
    assert subspace_only.ood_scores(off)[0] < 1.0  # projects right onto the class mean
    assert stats.ood_scores(off)[0] > 3 * np.quantile(held_out, 0.99)


def test_rule_thresholds_come_from_validation_quantiles() -> None:
    rng = np.random.default_rng(0)
    probabilities = softmax(rng.normal(0, 2, (1000, 7)))
    ood = rng.gamma(4, 1, 1000)
    rule = choose_rule(probabilities, ood, ood_quantile=0.99, target_coverage=0.9)
    assert np.mean(probabilities.max(1) < rule.min_confidence) == pytest.approx(0.1, abs=0.002)
    assert np.mean(ood > (rule.max_ood_score or 0)) == pytest.approx(0.01, abs=0.002)
    y = probabilities.argmax(1)
    summary = selective_summary(y, probabilities, ood, rule)
    assert 0.88 <= summary["coverage"] <= 0.90
    assert summary["abstained_out_of_distribution"] == pytest.approx(0.01, abs=0.002)
    assert summary["balanced_accuracy_answered"] == 1.0


def test_sanity_check_records_each_decision(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20), "white").save(tmp_path / "cat.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    images = sanity_images(tmp_path) + noise_images(seed=0)
    assert [name for name, _ in images][0] == "cat.bmp" and len(images) == 5

    def classify(batch: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        probabilities = np.tile([[0.9, 0.1]], (len(batch), 1))
        return probabilities, np.array([0.0] + [99.0] * (len(batch) - 1))

    results = check_sanity(classify, images, ["a", "b"], AbstentionRule(0.5, 10.0))
    assert [r.decision for r in results] == ["NONE"] + ["OUT_OF_DISTRIBUTION"] * 4
    assert not results[0].abstained and all(r.abstained for r in results[1:])
    assert sanity_images(None) == []
