"""A tiny real SavedModel whose class evidence sits where the image says, for Grad-CAM tests.

`export_region_version` builds a network by hand: 4x4 average pooling of the [-1, 1] image, a
1x1 convolution whose channel 0 fires on red pixels (red minus green) and channel 1 on green ones
(green minus red), both ReLU'd, pooled, and a linear head in which only "mel" reads channel 0 and
only "nv" reads channel 1. A red patch is therefore melanoma evidence exactly where it is, and a
green patch naevus evidence: a correct Grad-CAM of "mel" is hot on the red patch and cold
elsewhere. The exported version goes through the real trainer export (`ServingModule`), so its
`explain` signature is the one the released model carries.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import TINY_INPUT, TINY_MODEL_NAME, tiny_config

RED = (255, 0, 0)
GREEN = (0, 255, 0)
GREY = (128, 128, 128)
IMAGE_SIDE = 128  # pixels: over the 64 px minimum, and a multiple of the 32 px model input
EVIDENCE_GAIN = 20.0  # logit per unit of mean channel activation: a patch decides the class


def region_network() -> object:
    import keras

    from dermserve.trainer.network import FEATURES_LAYER

    labels = tiny_config().labels
    inputs = keras.Input((TINY_INPUT.height, TINY_INPUT.width, 3))
    pooled = keras.layers.AveragePooling2D(4)(inputs)
    evidence = keras.layers.Conv2D(2, 1, activation="relu", name="evidence")(pooled)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(evidence)
    head = keras.layers.Dense(len(labels), name="logits")
    logits = head(features)
    network = keras.Model(inputs, [logits, features])
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = [1.0, -1.0, 0.0]  # red minus green
    kernel[0, 0, :, 1] = [-1.0, 1.0, 0.0]  # green minus red
    network.get_layer("evidence").set_weights([kernel, np.zeros(2, np.float32)])
    weights = np.zeros((2, len(labels)), np.float32)
    weights[0, labels.index("mel")] = EVIDENCE_GAIN
    weights[1, labels.index("nv")] = EVIDENCE_GAIN
    head.set_weights([weights, np.zeros(len(labels), np.float32)])
    return network


def export_region_version(base: Path, version: int) -> Path:
    """Export the region network as version `version` of TINY_MODEL_NAME under `base`."""
    from dermserve.trainer.export import ServingModule, save_version

    config = tiny_config(version)
    version_dir = base / TINY_MODEL_NAME / str(version)
    save_version(ServingModule(region_network(), config), config, version_dir)
    return version_dir


def patched_png(*patches: tuple[tuple[int, int, int], str]) -> bytes:
    """A grey PNG with a solid square of `colour` filling each named quadrant ("top-left",
    "top-right", "bottom-left", "bottom-right"), e.g. patched_png((RED, "top-left"))."""
    pixels = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), GREY, np.uint8)
    half = IMAGE_SIDE // 2
    for colour, quadrant in patches:
        vertical, horizontal = quadrant.split("-")
        rows = slice(0, half) if vertical == "top" else slice(half, IMAGE_SIDE)
        cols = slice(0, half) if horizontal == "left" else slice(half, IMAGE_SIDE)
        pixels[rows, cols] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def hottest_quadrant(heatmap: np.ndarray) -> str:
    """Which quadrant of `heatmap` [h, w] holds the most heat."""
    height, width = heatmap.shape
    sums = {f"{v}-{h}": float(heatmap[rows, cols].sum())
            for v, rows in (("top", slice(0, height // 2)), ("bottom", slice(height // 2, None)))
            for h, cols in (("left", slice(0, width // 2)), ("right", slice(width // 2, None)))}
    return max(sums, key=lambda quadrant: sums[quadrant])
