"""A version as the service sees it: load the SavedModel and classify PIL images through
`core.preprocessing.to_model_input` and the `serving_default` signature, with their context rows
when the version takes context (neutral rows when the caller has none, as the service sends)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.core.backends.savedmodel import takes_context
from dermserve.core.context import ContextBatch, context_or_neutral
from dermserve.core.model_config import (
    CONFIG_OUTPUT,
    IMAGE_INPUT,
    METADATA_SIGNATURE,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    PROBE_INPUT,
    SERVING_SIGNATURE,
    ModelConfig,
)
from dermserve.core.preprocessing import to_model_input

SERVING_BATCH = 32  # images per signature call: bounds memory at 224 px on a small machine


class ServedVersion:
    """A loaded version: its config and a `classify(images) -> (probabilities, ood)` callable."""

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf

        self.version_dir = version_dir
        self.config = ModelConfig.read(version_dir)
        self._loaded: Any = tf.saved_model.load(str(version_dir))
        self._serve = self._loaded.signatures[SERVING_SIGNATURE]
        self._metadata = self._loaded.signatures[METADATA_SIGNATURE]
        self.takes_context = takes_context(self._serve)

    def inputs(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([to_model_input(image, self.config.input) for image in images])

    def classify_arrays(self, batch: np.ndarray, context: ContextBatch | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N, K] and OOD scores [N] of preprocessed uint8 images [N, H, W, 3] and
        their context rows (neutral when None; ignored unless the version takes context)."""
        import tensorflow as tf

        rows = context_or_neutral(context, len(batch)) if self.takes_context else None
        probabilities, ood = [], []
        for start in range(0, len(batch), SERVING_BATCH):
            stop = start + SERVING_BATCH
            inputs = {IMAGE_INPUT: batch[start:stop],
                      **({} if rows is None else rows.rows(start, stop).tensors())}
            out = self._serve(**{name: tf.constant(value) for name, value in inputs.items()})
            probabilities.append(out[PROBABILITIES_OUTPUT].numpy())
            ood.append(out[OOD_OUTPUT].numpy())
        return np.concatenate(probabilities), np.concatenate(ood)

    def classify(self, images: list[Image.Image], context: ContextBatch | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
        return self.classify_arrays(self.inputs(images), context)

    def metadata_config(self) -> ModelConfig:
        """The config the `metadata` signature returns (must equal the JSON file's)."""
        import tensorflow as tf

        out = self._metadata(**{PROBE_INPUT: tf.constant([0], tf.int32)})
        return ModelConfig.from_json(out[CONFIG_OUTPUT].numpy()[0])


def read_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Decode image files fully (so that no file handle stays open)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
