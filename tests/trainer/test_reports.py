"""The evaluation summary, the data report and the model card on small known inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, InputSpec, ModelConfig
from dermserve.trainer.data import load_records, split_by_lesion
from dermserve.trainer.datareport import counts, summary, write_data_report
from dermserve.trainer.evaluate import evaluate, flat_metrics
from dermserve.trainer.modelcard import render_model_card
from dermserve.trainer.report import plain, render_markdown, target_results

LABELS = tuple(HAM10000_DISPLAY_NAMES)


def _perfect(n_per_class: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.repeat(np.arange(len(LABELS)), n_per_class)
    probabilities = np.full((len(y), len(LABELS)), 0.01)
    probabilities[np.arange(len(y)), y] = 0.94
    return y, probabilities, [f"lesion{i // 2}" for i in range(len(y))]


def test_evaluation_of_perfect_predictions() -> None:
    y, probabilities, groups = _perfect()
    result = evaluate(y, probabilities, groups, LABELS, melanoma_threshold=0.5,
                      bootstrap_samples=30)
    headline = result["metrics"]
    for name in ("balanced_accuracy", "macro_f1", "macro_auc", "accuracy",
                 "melanoma_sensitivity", "melanoma_specificity"):
        assert headline[name]["value"] == pytest.approx(1.0), name
    assert headline["ece"]["value"] == pytest.approx(0.06)  # 0.94 confident, always right
    assert result["lesions"] == 14 and result["images"] == 28
    assert result["confusion_matrix"] == np.diag([4] * 7).tolist()
    flat = flat_metrics(result, prefix="tta_")
    assert flat["tta_balanced_accuracy"] == 1.0 and len(flat["tta_balanced_accuracy_ci95"]) == 2


def test_melanoma_operating_point_differs_from_argmax() -> None:
    y, probabilities, groups = _perfect()
    mel = LABELS.index("mel")
    probabilities[y == LABELS.index("nv"), mel] = 0.5  # nevi look a bit like melanoma
    low = evaluate(y, probabilities, groups, LABELS, melanoma_threshold=0.4,
                   bootstrap_samples=10)["metrics"]
    assert low["melanoma_specificity"]["value"] == pytest.approx(20 / 24)
    assert low["melanoma_specificity_argmax"]["value"] == 1.0


def test_targets_and_markdown_render_nan_as_na() -> None:
    y, probabilities, groups = _perfect()
    result = evaluate(y, probabilities, groups, LABELS, None, bootstrap_samples=10)
    targets = target_results(result["metrics"], 192)
    assert targets["balanced_accuracy"]["met"] and targets["input_size"]["met"]
    assert not targets["melanoma_sensitivity"]["met"]  # no operating point: not measured
    assert plain({"a": float("nan"), "b": np.float32(1.5), "c": (np.int64(2),)}) == \
        {"a": None, "b": 1.5, "c": [2]}
    report = {"model": {"name": "m"}, "test": result, "test_tta": None, "targets": targets,
              "operating_point": {"target_sensitivity": 0.85}, "calibration": {"t": 1.0},
              "abstention": {"rule": {}, "rule_description": "", "validation": {}, "test": {}},
              "data": {"images": {"test": 28}, "lesions": {"test": 14}}, "sanity": []}
    text = render_markdown(report)
    assert "| balanced_accuracy | 1.0000 | [1.0000, 1.0000] |" in text
    assert "| melanoma_sensitivity | >= 0.8 | n/a | NO |" in text
    assert "Not measured (no --external-dir, no --bcn-dir)." in text


def test_data_report_counts_every_split(ham_dir: Path, tmp_path: Path) -> None:
    split = split_by_lesion(load_records(ham_dir), seed=0)
    table = counts(split)
    assert sum(sum(values.values()) for values in table["dx"].values()) == 56
    assert table["age"]["train"]["unknown"] + table["age"]["val"]["unknown"] + \
        table["age"]["test"]["unknown"] == 14  # lesion 0 of each class has no age
    assert summary(split)["lesions_in_two_splits"] == 0
    path = write_data_report(split, tmp_path / "report", "synthetic")
    assert "![dx](data_dx.png)" in path.read_text()
    for attribute in ("dx", "age", "sex", "localization"):
        assert (tmp_path / "report" / f"data_{attribute}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "data_report.json").read_text())["counts"]["sex"]


def test_model_card_states_licence_and_limits() -> None:
    y, probabilities, groups = _perfect()
    result = evaluate(y, probabilities, groups, LABELS, 0.5, bootstrap_samples=10)
    config = ModelConfig(LABELS, HAM10000_DISPLAY_NAMES, InputSpec(192, 192))
    card = render_model_card(config, {
        "model": {"name": "ham10000", "backbone": "mobilenet_v2", "size_bytes": 123},
        "data": {"seed": 1, "images": {}, "lesions": {}}, "test": result,
        "sanity": [{"name": "cat.bmp", "abstained": True}, {"name": "noise", "abstained": False}]})
    assert "abstained on 1 of 2 non-skin photos and noise images; ANSWERED noise." in card
    for phrase in ("Not a diagnostic device", "CC BY-NC 4.0", "200x150", "192x192",
                   "Balanced accuracy (mean per-class recall): 1.000 (95% CI 1.000-1.000)"):
        assert phrase in card, phrase


def test_the_model_card_says_when_the_external_checks_sent_the_patient_context() -> None:
    y, probabilities, groups = _perfect()
    result = evaluate(y, probabilities, groups, LABELS, 0.5, bootstrap_samples=10)
    config = ModelConfig(LABELS, HAM10000_DISPLAY_NAMES, InputSpec(192, 192))
    bcn = {"images": 4, "lesions": 2, "melanoma_auc": {"value": 0.8, "ci95": [0.7, 0.9]},
           "balanced_accuracy": {"value": 0.4, "ci95": [0.3, 0.5]}, "recall_argmax": {"mel": 0.5},
           "melanoma_threshold": 0.3, "melanoma_sensitivity": 0.5, "nevus_specificity": 0.9}
    cards = {mode: render_model_card(config, {
        "model": {"name": "ham10000", "backbone": "two-origin", "size_bytes": 123},
        "data": {"seed": 1, "images": {}, "lesions": {}}, "test": result, "sanity": [],
        "external_check": {"external_bcn84": bcn, "context": mode}})
        for mode in ("given", "neutral", "not taken")}
    assert "each image was sent its own recorded age, sex and body site" in cards["given"]
    assert "recorded age" not in cards["neutral"] and "recorded age" not in cards["not taken"]
