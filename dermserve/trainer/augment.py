"""Augmentation of training images (and only those: never validation or test, never before the
split). PIL and numpy, seeded per (seed, epoch or view, image), so a view is the same whatever order
or process makes it.

Each view: a framing (the full frame, a centred square crop, or a random crop with scale and
aspect jitter), flips and quarter turns, a small rotation, colour jitter, occasional blur and
resolution jitter, then `core.preprocessing.to_model_input`, the one preprocessing function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dermserve.core.model_config import InputSpec
from dermserve.core.preprocessing import to_model_input


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transforms; the defaults keep a lesion recognisable."""

    full_frame_probability: float = 0.25  # clients send whole dermatoscope frames as they are
    square_crop_probability: float = 0.2  # ... and centred square crops (phone apps, ISIC 2019)
    crop_scale: tuple[float, float] = (0.35, 1.0)  # of the frame's area: lesions fill 20-80%
    crop_aspect: tuple[float, float] = (0.6, 1.67)  # width / height of the crop, log-uniform
    max_rotation_deg: float = 20.0  # on top of quarter turns: dermoscopy has no "up"
    brightness: float = 0.2  # factors in [1 - x, 1 + x]: dermatoscopes differ in lighting
    contrast: float = 0.2
    saturation: float = 0.2
    hue_shift: float = 0.03  # of the full hue circle: small, colour is diagnostic
    blur_probability: float = 0.15
    blur_radius: tuple[float, float] = (0.3, 1.2)  # pixels at the source resolution
    rescale_probability: float = 0.25  # resolution jitter: down- then up-scale
    rescale_factor: tuple[float, float] = (0.4, 0.85)


def view_rng(seed: int, view: int, index: int) -> np.random.Generator:
    """The generator of one view of one image: independent of order and of other images."""
    return np.random.default_rng([seed, view, index])


def _crop_box(size: tuple[int, int], rng: np.random.Generator,
              settings: AugmentSettings) -> tuple[int, int, int, int]:
    width, height = size
    draw = rng.uniform()
    if draw < settings.full_frame_probability:
        return 0, 0, width, height
    if draw < settings.full_frame_probability + settings.square_crop_probability:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    area = width * height * rng.uniform(*settings.crop_scale)
    aspect = np.exp(rng.uniform(*np.log(settings.crop_aspect)))
    crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
    crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return left, top, left + crop_w, top + crop_h


def _geometry(image: Image.Image, rng: np.random.Generator,
              settings: AugmentSettings) -> Image.Image:
    if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    angle = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg)
    # Fill the corners with the border's mean colour: dark vignettes are common in dermoscopy,
    # but a pure black wedge would be a new artefact.
    border = np.asarray(image)[[0, -1]].reshape(-1, 3).mean(axis=0)
    image = image.rotate(angle, Image.Resampling.BILINEAR,
                         fillcolor=tuple(int(c) for c in border))
    image = image.crop(_crop_box(image.size, rng, settings))
    turns = int(rng.integers(0, 4))
    return image.rotate(90 * turns, expand=True) if turns else image


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _colour(image: Image.Image, rng: np.random.Generator,
            settings: AugmentSettings) -> Image.Image:
    for enhancer, amount in ((ImageEnhance.Brightness, settings.brightness),
                             (ImageEnhance.Contrast, settings.contrast),
                             (ImageEnhance.Color, settings.saturation)):
        image = enhancer(image).enhance(rng.uniform(1 - amount, 1 + amount))
    return _shift_hue(image, rng.uniform(-settings.hue_shift, settings.hue_shift))


def _degrade(image: Image.Image, rng: np.random.Generator,
             settings: AugmentSettings) -> Image.Image:
    if rng.uniform() < settings.blur_probability:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*settings.blur_radius)))
    if rng.uniform() < settings.rescale_probability:
        factor = rng.uniform(*settings.rescale_factor)
        small = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize(
            image.size, Image.Resampling.BILINEAR)
    return image


def augment(image: Image.Image, spec: InputSpec, rng: np.random.Generator,
            settings: AugmentSettings | None = None) -> np.ndarray:
    """One random training view of `image`, as the model's uint8 (H, W, 3) input."""
    settings = settings or AugmentSettings()
    image = image.convert("RGB")
    image = _geometry(image, rng, settings)
    image = _colour(image, rng, settings)
    image = _degrade(image, rng, settings)
    return to_model_input(image, spec)
