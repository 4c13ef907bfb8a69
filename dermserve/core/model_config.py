"""The description that travels with every model version (`assets.extra/dermserve.json`, and the
`metadata` signature): labels, input size, preprocessing, calibration and abstention thresholds.

The service never hard-codes the class list: it reads it from the version that answers.
See docs/model-contract.md for the SavedModel signatures this accompanies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dermserve.core.errors import InternalError

CONFIG_FORMAT_VERSION = 1
CONFIG_RELATIVE_PATH = Path("assets.extra") / "dermserve.json"

# The SavedModel's signatures and their tensors: the trainer exports them (trainer/export.py), the
# backends call them (core/backends/), so both read the names from here.
SERVING_SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
IMAGE_INPUT = "image"
PROBE_INPUT = "probe"
PROBABILITIES_OUTPUT = "probabilities"
OOD_OUTPUT = "ood_score"
LABELS_OUTPUT = "labels"
CONFIG_OUTPUT = "config"
EXPLAIN_SIGNATURE = "explain"
"""Grad-CAM of one class per image (docs/model-contract.md); versions exported before issue 14
lack it, and the service answers them FAILED_PRECONDITION / EXPLANATION_UNSUPPORTED."""
CLASS_INDEX_INPUT = "class_index"
"""int32 [N]: the class to explain per image, -1 for the top class."""
HEATMAP_OUTPUT = "heatmap"
"""float32 [N, h, w] in [0, 1] at the last convolutional feature map's resolution."""
CLASS_INDEX_OUTPUT = "class_index"
"""int32 [N]: the class each heatmap explains (the top class where -1 was asked)."""
"""Where a version directory keeps its config; TF Serving ignores `assets.extra/`."""

DEFAULT_REFERENCE_PIXELS = 200 * 150
"""Pixels of detail the model was trained at: HAM10000 here is 200x150. Larger inputs are
downscaled (antialiased) to about this many pixels before resizing, so that sharper clinical images
look like the training images (a 224 px model lost ~0.1 balanced accuracy on sharper inputs)."""


@dataclass(frozen=True)
class InputSpec:
    """What the model's `image` input expects, and how to get there from any photo."""

    height: int
    width: int
    reference_pixels: int = DEFAULT_REFERENCE_PIXELS


@dataclass(frozen=True)
class AbstentionRule:
    """Abstain when the calibrated top probability is below `min_confidence`, or when the
    out-of-distribution score is above `max_ood_score` (None disables that half)."""

    min_confidence: float = 0.0
    max_ood_score: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Everything a client of a model version needs besides the graph itself."""

    labels: tuple[str, ...]
    display_names: dict[str, str]
    input: InputSpec
    temperature: float = 1.0
    abstention: AbstentionRule = field(default_factory=AbstentionRule)
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    format_version: int = CONFIG_FORMAT_VERSION

    def display_name(self, label: str) -> str:
        return self.display_names.get(label, label)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        try:
            raw = json.loads(text)
            return cls(
                labels=tuple(raw["labels"]),
                display_names=dict(raw.get("display_names", {})),
                input=InputSpec(**raw["input"]),
                temperature=float(raw.get("temperature", 1.0)),
                abstention=AbstentionRule(**raw.get("abstention", {})),
                metrics=dict(raw.get("metrics", {})),
                description=str(raw.get("description", "")),
                format_version=int(raw.get("format_version", CONFIG_FORMAT_VERSION)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f"malformed model config: {exc}", "BAD_MODEL_CONFIG") from exc

    @classmethod
    def read(cls, version_dir: Path) -> ModelConfig:
        path = version_dir / CONFIG_RELATIVE_PATH
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InternalError(f"cannot read {path}: {exc}", "BAD_MODEL_CONFIG") from exc

    def write(self, version_dir: Path) -> None:
        path = version_dir / CONFIG_RELATIVE_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")


HAM10000_DISPLAY_NAMES = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}
"""Readable names for HAM10000's dx codes; the trainer copies them into each version's config."""
