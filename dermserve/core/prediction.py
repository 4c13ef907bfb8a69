"""A classification result, transport-free: the servicer turns it into a ClassifyResponse and the
batch worker into a result row."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from dermserve.core.model_config import AbstentionRule, ModelConfig


class Abstention(enum.Enum):
    """Why a result should not be acted on (mirrors dermserve.v1.AbstentionReason)."""

    NONE = "NONE"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"
    OUT_OF_DISTRIBUTION = "OUT_OF_DISTRIBUTION"


@dataclass(frozen=True)
class LabelProbability:
    label: str
    display_name: str
    probability: float


@dataclass(frozen=True)
class DicomReference:
    """Where a DICOM image came from (core/image/dicom.py): its UIDs, never its patient."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    modality: str = ""


@dataclass(frozen=True)
class Prediction:
    """One image's result: every class, sorted by probability, and the version that made it."""

    request_id: str
    model_name: str
    model_version: int
    probabilities: tuple[LabelProbability, ...]
    abstention: Abstention
    ood_score: float
    dicom: DicomReference | None = None  # set when the image was a DICOM object
    context_used: bool = False  # the version took patient context, and this image had some

    @property
    def top_label(self) -> str:
        return self.probabilities[0].label

    @property
    def abstained(self) -> bool:
        return self.abstention is not Abstention.NONE


def decide_abstention(top_probability: float, ood_score: float, rule: AbstentionRule,
                      min_confidence_floor: float = 0.0) -> Abstention:
    """Out-of-distribution wins over low confidence: it is the stronger reason to look again.
    `min_confidence_floor` lets an operator demand more confidence than the version does."""
    if rule.max_ood_score is not None and ood_score > rule.max_ood_score:
        return Abstention.OUT_OF_DISTRIBUTION
    if top_probability < max(rule.min_confidence, min_confidence_floor):
        return Abstention.LOW_CONFIDENCE
    return Abstention.NONE


def build_prediction(request_id: str, model_name: str, model_version: int, config: ModelConfig,
                     probabilities: np.ndarray, ood_score: float,
                     min_confidence_floor: float = 0.0, context_used: bool = False) -> Prediction:
    """Pair one row of probabilities with the version's labels and apply its abstention rule."""
    pairs = sorted(
        (LabelProbability(label, config.display_name(label), float(p))
         for label, p in zip(config.labels, probabilities, strict=True)),
        key=lambda item: item.probability, reverse=True)
    abstention = decide_abstention(pairs[0].probability, ood_score, config.abstention,
                                   min_confidence_floor)
    return Prediction(request_id, model_name, model_version, tuple(pairs), abstention,
                      float(ood_score), context_used=context_used)
