"""The held-out evaluation of one version: every metric the report shows, with 95% intervals.

The test split is never used for a decision (temperature, thresholds and the melanoma operating
point all come from validation); this module only measures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from dermserve.trainer import metrics as m

logger = logging.getLogger(__name__)

MELANOMA = "mel"
DEFAULT_MELANOMA_SENSITIVITY = 0.85
"""The operating point: the P(mel) threshold reaching this validation sensitivity (issue 3's
target); the report also gives the plain argmax decision."""


def _metric_functions(num_classes: int, positive: int | None,
                      threshold: float | None) -> dict[str, m.MetricFn]:
    """Name -> metric of (y, probabilities), for the point estimate and the bootstrap."""
    functions: dict[str, m.MetricFn] = {
        "balanced_accuracy": lambda y, p: m.balanced_accuracy(y, p.argmax(1), num_classes),
        "macro_f1": lambda y, p: m.macro_f1(y, p.argmax(1), num_classes),
        "macro_auc": m.macro_auc,
        "ece": m.expected_calibration_error,
        "accuracy": lambda y, p: float((p.argmax(1) == y).mean()),
    }
    if positive is not None:
        functions["melanoma_sensitivity_argmax"] = \
            lambda y, p: m.sensitivity_specificity(y == positive, p.argmax(1) == positive)[0]
        functions["melanoma_specificity_argmax"] = \
            lambda y, p: m.sensitivity_specificity(y == positive, p.argmax(1) == positive)[1]
    if positive is not None and threshold is not None:
        functions["melanoma_sensitivity"] = \
            lambda y, p: m.sensitivity_specificity(y == positive, p[:, positive] >= threshold)[0]
        functions["melanoma_specificity"] = \
            lambda y, p: m.sensitivity_specificity(y == positive, p[:, positive] >= threshold)[1]
    return functions


def melanoma_threshold(probabilities: np.ndarray, y: np.ndarray, labels: Sequence[str],
                       sensitivity: float) -> float | None:
    """The operating point: the highest P(mel) threshold reaching `sensitivity` on these
    (validation) images; None without a melanoma class."""
    if MELANOMA not in labels:
        return None
    melanoma = list(labels).index(MELANOMA)
    return m.threshold_for_sensitivity(probabilities[:, melanoma], y == melanoma, sensitivity)


def per_class_table(y: np.ndarray, probabilities: np.ndarray,
                    labels: Sequence[str]) -> dict[str, dict[str, float]]:
    scores = m.per_class(m.confusion_matrix(y, probabilities.argmax(1), len(labels)))
    aucs = m.one_vs_rest_auc(y, probabilities)
    return {label: {"precision": float(scores.precision[k]), "recall": float(scores.recall[k]),
                    "f1": float(scores.f1[k]), "auc": float(aucs[k]),
                    "support": int(scores.support[k])} for k, label in enumerate(labels)}


def evaluate(y: np.ndarray, probabilities: np.ndarray, groups: Sequence[str],
             labels: Sequence[str], melanoma_threshold: float | None = None,
             bootstrap_samples: int = m.DEFAULT_BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Point estimates and lesion-bootstrap 95% intervals of every headline metric."""
    positive = list(labels).index(MELANOMA) if MELANOMA in labels else None
    functions = _metric_functions(len(labels), positive, melanoma_threshold)
    resamples = m.lesion_bootstrap_indices(groups, bootstrap_samples, seed)
    headline = {name: {"value": fn(y, probabilities),
                       "ci95": list(m.bootstrap_interval(fn, y, probabilities, resamples))}
                for name, fn in functions.items()}
    result: dict[str, Any] = {
        "images": int(len(y)), "lesions": int(len(set(groups))),
        "bootstrap": {"samples": bootstrap_samples, "unit": "lesion", "seed": seed},
        "metrics": headline,
        "melanoma_threshold": melanoma_threshold,
        "per_class": per_class_table(y, probabilities, labels),
        "confusion_matrix": m.confusion_matrix(y, probabilities.argmax(1), len(labels)).tolist(),
    }
    logger.info("evaluation on %d images: balanced accuracy %.4f, macro AUC %.4f", len(y),
                headline["balanced_accuracy"]["value"], headline["macro_auc"]["value"])
    return result


def flat_metrics(evaluation: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{name: value, name_ci95: [lo, hi]}` for the version's config (the gate reads
    `balanced_accuracy` from there)."""
    flat: dict[str, Any] = {}
    for name, entry in evaluation["metrics"].items():
        flat[prefix + name] = entry["value"]
        flat[f"{prefix}{name}_ci95"] = entry["ci95"]
    return flat
