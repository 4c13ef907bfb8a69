"""The model half every reference peer shares, run inside the peer's own process and virtualenv:
the SavedModel's `serving_default` signature, and the preprocessing dermserve does before it.

Only dermserve.core.model_config and dermserve.core.preprocessing are imported from the product (PIL
and numpy, no gRPC, no pydicom), so the peers' environments need nothing of dermserve's. The decode
is dermserve's (dermserve/core/image/decoding.py) without its validation: a JPEG decoded at the
least scale that keeps the detail the model input keeps, EXIF orientation applied, RGB."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dermserve.core.model_config import (
    IMAGE_INPUT,
    PROBABILITIES_OUTPUT,
    SERVING_SIGNATURE,
    ModelConfig,
)
from dermserve.core.preprocessing import detail_size, to_model_input

MODEL_DIR_ENV = "DERMSERVE_PEER_MODEL_DIR"
"""The version directory a peer serves, for the peers whose server builds the model itself
(BentoML's service class, MLServer's model-settings.json) rather than taking it as a flag."""


class ServedModel:
    """One SavedModel version: images in (encoded or opened), probabilities out."""

    def __init__(self, model_dir: Path) -> None:
        import tensorflow as tf

        self._tf: Any = tf
        config = ModelConfig.read(model_dir)
        self.labels = config.labels
        self.spec = config.input
        self._serve = tf.saved_model.load(str(model_dir)).signatures[SERVING_SIGNATURE]

    def input_of(self, image: Image.Image) -> np.ndarray:
        """An opened, not yet decoded image as the model's (height, width, 3) uint8 input."""
        image.draft(image.mode, detail_size(image.size, self.spec))
        upright = ImageOps.exif_transpose(image)
        return to_model_input(upright.convert("RGB"), self.spec)

    def input_of_bytes(self, data: bytes) -> np.ndarray:
        return self.input_of(Image.open(io.BytesIO(data)))

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, height, width, 3) uint8 in, (N, classes) float32 probabilities out."""
        outputs = self._serve(**{IMAGE_INPUT: self._tf.constant(inputs)})
        return np.asarray(outputs[PROBABILITIES_OUTPUT].numpy(), np.float32)

    def classify(self, images: list[bytes]) -> np.ndarray:
        """Encoded images in, one row of probabilities each."""
        return self.probabilities(np.stack([self.input_of_bytes(data) for data in images]))
