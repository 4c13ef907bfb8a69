"""Abstention thresholds, chosen on validation only, and the sanity check on non-skin images.

Rule (stored per version as `core.model_config.AbstentionRule`):
- `max_ood_score`: the `ood_quantile` (default 99th percentile) of the validation OOD scores, so
  about 1% of in-distribution images are flagged OUT_OF_DISTRIBUTION;
- `min_confidence`: the (1 - `target_coverage`) quantile of the validation top calibrated
  probabilities, so the least confident 10% (by default) of validation images are LOW_CONFIDENCE.
The serving side applies the rule with `core.prediction.decide_abstention`; so does this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.core.model_config import AbstentionRule
from dermserve.core.prediction import Abstention, decide_abstention
from dermserve.trainer.metrics import balanced_accuracy

logger = logging.getLogger(__name__)

DEFAULT_OOD_QUANTILE = 0.99  # of validation OOD scores: ~1% of real lesions flagged as OOD
DEFAULT_TARGET_COVERAGE = 0.90  # of validation images answered: a clinician sees 1 in 10 back
THRESHOLD_DECIMALS = 4
"""Thresholds are rounded outwards (confidence down, OOD up) to 4 decimals: readable in the
config, and a float32 served score equal to a float64 validation quantile is not abstained on."""
DEFAULT_NOISE_IMAGES = 4  # generated noise images in the sanity check (two kinds, two sizes)
SANITY_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png")

Classify = Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray]]
"""Images -> (calibrated probabilities [N, K], ood scores [N]), e.g. through a SavedModel."""


def choose_rule(probabilities: np.ndarray, ood_scores: np.ndarray | None,
                ood_quantile: float = DEFAULT_OOD_QUANTILE,
                target_coverage: float = DEFAULT_TARGET_COVERAGE) -> AbstentionRule:
    """Thresholds from validation probabilities and OOD scores (see the module docstring)."""
    scale = 10.0 ** THRESHOLD_DECIMALS
    confidence = probabilities.max(axis=1)
    min_confidence = math.floor(np.quantile(confidence, 1 - target_coverage) * scale) / scale
    max_ood = None if ood_scores is None else \
        math.ceil(np.quantile(ood_scores, ood_quantile) * scale) / scale
    return AbstentionRule(min_confidence=min_confidence, max_ood_score=max_ood)


def decisions(probabilities: np.ndarray, ood_scores: np.ndarray,
              rule: AbstentionRule) -> list[Abstention]:
    """The service's decision for each row."""
    return [decide_abstention(float(p.max()), float(o), rule)
            for p, o in zip(probabilities, ood_scores, strict=True)]


def decision_shares(made: list[Abstention]) -> dict[Abstention, float]:
    """The share of rows given each decision (NONE: answered)."""
    return {reason: float(np.mean([d is reason for d in made])) for reason in Abstention}


def selective_summary(y: np.ndarray, probabilities: np.ndarray, ood_scores: np.ndarray,
                      rule: AbstentionRule) -> dict[str, float]:
    """Coverage, why images were abstained on, and the metrics on the answered images."""
    made = decisions(probabilities, ood_scores, rule)
    answered = np.array([d is Abstention.NONE for d in made], dtype=bool)
    predicted = probabilities.argmax(axis=1)
    shares = decision_shares(made)
    summary = {f"abstained_{reason.value.lower()}": share for reason, share in shares.items()
               if reason is not Abstention.NONE}
    summary["coverage"] = shares[Abstention.NONE]
    summary["accuracy_answered"] = float((predicted == y)[answered].mean()) if answered.any() \
        else float("nan")
    summary["balanced_accuracy_answered"] = balanced_accuracy(
        y[answered], predicted[answered], probabilities.shape[1])
    return summary


def noise_images(seed: int, count: int = DEFAULT_NOISE_IMAGES) -> list[tuple[str, Image.Image]]:
    """Uniform and Gaussian RGB noise at the HAM10000 size and a phone-photo aspect."""
    rng = np.random.default_rng(seed)
    sizes = ((150, 200), (480, 640))  # (height, width)
    images = []
    for n in range(count):
        height, width = sizes[n % len(sizes)]
        if n // len(sizes) % 2 == 0:
            pixels = rng.integers(0, 256, (height, width, 3))
            kind = "uniform"
        else:
            pixels = np.clip(rng.normal(128, 60, (height, width, 3)), 0, 255)
            kind = "gaussian"
        images.append((f"noise-{kind}-{width}x{height}-{n}",
                       Image.fromarray(pixels.astype(np.uint8))))
    return images


def sanity_images(sanity_dir: Path | None) -> list[tuple[str, Image.Image]]:
    """The non-skin photos in `sanity_dir` (none when it is not given)."""
    if sanity_dir is None:
        return []
    paths = sorted(p for p in Path(sanity_dir).iterdir() if p.suffix.lower() in SANITY_SUFFIXES)
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append((path.name, image.convert("RGB")))
    return images


@dataclass(frozen=True)
class SanityResult:
    """One non-skin or noise image and what the version decided."""

    name: str
    top_label: str
    top_probability: float
    ood_score: float
    decision: str

    @property
    def abstained(self) -> bool:
        return self.decision != Abstention.NONE.value


def check_sanity(classify: Classify, images: Sequence[tuple[str, Image.Image]],
                 labels: Sequence[str], rule: AbstentionRule) -> list[SanityResult]:
    """Run every image through `classify` and record the decision the service would make."""
    if not images:
        return []
    probabilities, ood_scores = classify([image for _, image in images])
    made = decisions(probabilities, ood_scores, rule)
    results = [SanityResult(name, labels[int(p.argmax())], float(p.max()), float(o), d.value)
               for (name, _), p, o, d in zip(images, probabilities, ood_scores, made, strict=True)]
    for result in results:
        logger.info("sanity %s: %s (top %s %.3f, ood %.2f)", result.name, result.decision,
                    result.top_label, result.top_probability, result.ood_score)
    return results


def sanity_as_dicts(results: Sequence[SanityResult]) -> list[dict[str, Any]]:
    return [dict(result.__dict__, abstained=result.abstained) for result in results]
