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

from dermserve.core.model_config import InputSpec


def reduced_size(size: tuple[int, int], reference_pixels: int) -> tuple[int, int]:
    """`size` scaled down (aspect kept) to about `reference_pixels`; a smaller size unchanged."""
    width, height = size
    if width * height <= reference_pixels:
        return size
    scale = math.sqrt(reference_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def detail_size(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    """The least size an image of `size` may be decoded at without losing detail that
    `to_model_input` keeps: its reduced size, and the input's longer side each way (either
    orientation, as EXIF may turn the image after decoding). The classifier decodes a JPEG at
    the least scale that holds it (core/image/decoding.py `draft_for_input`)."""
    width, height = reduced_size(size, spec.reference_pixels)
    side = max(spec.width, spec.height)
    return max(width, side), max(height, side)


def normalise_detail(image: Image.Image, reference_pixels: int) -> Image.Image:
    """Downscale (antialiased) so the image holds no more detail than the training images."""
    size = reduced_size(image.size, reference_pixels)
    if size == image.size:
        return image
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
