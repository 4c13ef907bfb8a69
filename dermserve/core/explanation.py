"""Explanations, transport-free: which class to explain, and the heatmap drawn over the image.

The heatmap itself comes from the model version's `explain` signature (Grad-CAM in the graph,
docs/model-contract.md), so the embedded backend and TF Serving compute the same map; this module
only turns a label into the signature's class index and the map into a PNG a person can look at.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dermserve.core.errors import InvalidRequest
from dermserve.core.model_config import ModelConfig
from dermserve.core.prediction import Prediction

TOP_CLASS = -1
"""The `explain` signature's class index meaning "the image's top class"."""

OVERLAY_MAX_ALPHA = 0.6
"""Opacity of the colour map where the heatmap is 1; it falls with the heat to 0, so the cold
parts of the image stay as the model saw them and the lesion under a hot spot stays visible."""

_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 143], [0, 128, 255], [64, 255, 128], [255, 224, 0], [200, 0, 0]],
                    np.float32)
"""A jet-like colour map (cold blue to hot red) as stops, so the core needs no plotting library."""


@dataclass(frozen=True)
class Explanation:
    """One image's classification and the Grad-CAM map of one class."""

    prediction: Prediction
    explained_label: str
    heatmap: np.ndarray  # [h, w] float32 in [0, 1]: the last feature map's resolution
    overlay_png: bytes


def class_index(config: ModelConfig, label: str) -> int:
    """The position of `label` in the version's labels; TOP_CLASS for an empty label."""
    if not label:
        return TOP_CLASS
    if label not in config.labels:
        raise InvalidRequest("the label is not one of this model version's labels "
                             f"{list(config.labels)}", "UNKNOWN_LABEL")
    return config.labels.index(label)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """`heatmap` [H, W] in [0, 1] as RGB float32 [H, W, 3] through the colour map."""
    values = np.clip(heatmap, 0.0, 1.0)
    return np.stack([np.interp(values, _COLOUR_STOPS, _COLOURS[:, channel])
                     for channel in range(3)], axis=-1).astype(np.float32)


def upsample(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """`heatmap` [h, w] resized bilinearly to [height, width]."""
    image = Image.fromarray(np.asarray(heatmap, np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)


def overlay_png(model_input: np.ndarray, heatmap: np.ndarray,
                max_alpha: float = OVERLAY_MAX_ALPHA) -> bytes:
    """A PNG of `model_input` (uint8 [H, W, 3], the image as the model saw it) with `heatmap`
    upsampled to its size and blended over it, more opaque where it is hotter."""
    height, width = model_input.shape[:2]
    heat = upsample(heatmap, height, width)
    alpha = (max_alpha * np.clip(heat, 0.0, 1.0))[..., None]
    blended = (1.0 - alpha) * model_input.astype(np.float32) + alpha * colourise(heat)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()
