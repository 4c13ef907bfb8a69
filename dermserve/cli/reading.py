"""How one classification reads for a clinician: a headline ("Needs review" or "Result") and the
cues under it. The CLI prints these lines (cli/main.py); the web page says the same in the same
words (web/static/classify.js, whose copies of the two levels below a test compares).

    Result: Melanocytic nevi (nv), probability 0.912
    Low confidence: the top probability 0.55 is under 0.60; Melanoma (mel) has 0.30.
    Melanoma operating point: probability 0.161 is below the threshold 0.165 (borderline:
      within 0.02). At this threshold the held-out test sensitivity was 73.3%, ...
    Out-of-distribution score 12.3 against the threshold 97.2: typical of the training images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

LOW_CONFIDENCE_CUE = 0.60
"""Top probability under which a result that did not abstain is flagged "Low confidence".
The version abstains only below its own level (0.41 for the released version 3); between that
and 0.60 the other six classes share at least 40%, so the runner-up is a real alternative and
the reader is told so. A cue to read the result as uncertain, not an abstention."""

BORDERLINE_MARGIN = 0.02
"""Absolute probability either side of the melanoma operating threshold within which the
operating-point line says "borderline": 0.161 against a threshold of 0.165 is not reassuringly
below it, and the margin is small against the threshold itself (0.165 for version 3)."""

MELANOMA_LABEL = "mel"


@dataclass(frozen=True)
class VersionFacts:
    """What a version's GetModel says that the reading needs: its thresholds and metrics."""

    min_confidence: float
    max_ood_score: float | None
    metrics: dict[str, Any]

    @classmethod
    def from_model_version(cls, version: Any) -> VersionFacts:
        """From a ModelVersion message."""
        try:
            metrics = json.loads(version.metrics_json or "{}")
        except ValueError:
            metrics = {}
        ood = version.max_ood_score if version.HasField("max_ood_score") else None
        return cls(version.min_confidence, ood, metrics)


def percent(probability: float) -> str:
    return f"{100 * probability:.1f}%"


def headline(result: dict[str, Any]) -> str:
    """ "Needs review: ..." for an abstention, "Result: <class>, probability p" otherwise."""
    top = result["probabilities"][0]
    if result["abstained"]:
        why = {"ABSTENTION_REASON_LOW_CONFIDENCE": "the model is not confident enough",
               "ABSTENTION_REASON_OUT_OF_DISTRIBUTION": "the image is unlike the training "
                                                         "images"}.get(
            result["abstention_reason"], "the model abstained")
        return (f"Needs review: {why}; do not act on the most probable class "
                f"({top['display_name']}, {top['probability']:.3f}).")
    return f"Result: {top['display_name']} ({top['label']}), probability {top['probability']:.3f}"


def low_confidence_cue(result: dict[str, Any]) -> str | None:
    probabilities = result["probabilities"]
    top = probabilities[0]
    if result["abstained"] or top["probability"] >= LOW_CONFIDENCE_CUE:
        return None
    line = (f"Low confidence: the top probability {top['probability']:.2f} is under "
            f"{LOW_CONFIDENCE_CUE:.2f}")
    if len(probabilities) > 1:
        second = probabilities[1]
        line += (f"; {second['display_name']} ({second['label']}) has "
                 f"{second['probability']:.2f}")
    return line + "."


def operating_point_line(result: dict[str, Any], facts: VersionFacts | None) -> str | None:
    threshold = facts.metrics.get("melanoma_threshold") if facts else None
    melanoma = next((p for p in result["probabilities"] if p["label"] == MELANOMA_LABEL), None)
    if melanoma is None:
        return None
    if threshold is None or facts is None:
        return "This model version records no melanoma operating point."
    probability, threshold = float(melanoma["probability"]), float(threshold)
    side = "at or above" if probability >= threshold else "below"
    line = (f"Melanoma operating point: probability {probability:.3f} is {side} the threshold "
            f"{threshold:.3f}")
    if abs(probability - threshold) <= BORDERLINE_MARGIN:
        line += f" (borderline: within {BORDERLINE_MARGIN:.2f})"
    line += "."
    sensitivity = facts.metrics.get("melanoma_sensitivity")
    specificity = facts.metrics.get("melanoma_specificity")
    if sensitivity is not None and specificity is not None:
        line += (f" At this threshold the held-out test sensitivity was {percent(sensitivity)} "
                 f"and the specificity {percent(specificity)}.")
    return line


def ood_line(result: dict[str, Any], facts: VersionFacts | None) -> str:
    score = float(result["ood_score"])
    if facts is None or facts.max_ood_score is None:
        return f"Out-of-distribution score {score:.1f} (this version has no threshold for it)."
    verdict = ("unlike the training images" if score > facts.max_ood_score
               else "typical of the training images")
    return (f"Out-of-distribution score {score:.1f} against the threshold "
            f"{facts.max_ood_score:.1f}: {verdict}.")


def reading(result: dict[str, Any], facts: VersionFacts | None) -> list[str]:
    """The headline and the cues, in the order a reader needs them."""
    lines = [headline(result), low_confidence_cue(result), operating_point_line(result, facts),
             ood_line(result, facts)]
    return [line for line in lines if line]
