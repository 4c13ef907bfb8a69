"""The one preprocessing function, shared by training, the online service and the batch worker.

A decoded RGB image of any size becomes a uint8 array of the model's input size in two steps:
1. bring its level of detail down to the training images' (antialiased downscale to about
   `reference_pixels` pixels; smaller images are left alone), then
2. resize the whole frame to the input size (bilinear, aspect not kept: training jitters the
   aspect ratio and crop, so full frames, square crops and phone photos all look familiar).
Pixel scaling to [-1, 1] happens inside the SavedModel, so clients send plain uint8 RGB.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from service.model_config import InputSpec


def normalise_detail(image: Image.Image, reference_pixels: int) -> Image.Image:
    """Downscale (antialiased) so the image holds no more detail than the training images."""
    width, height = image.size
    if width * height <= reference_pixels:
        return image
    scale = math.sqrt(reference_pixels / (width * height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap makes Pillow shrink by whole factors first: much faster on phone-sized inputs,
    # and still antialiased.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def to_model_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Return a (height, width, 3) uint8 array ready for the model's `image` input."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = normalise_detail(image, spec.reference_pixels)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
