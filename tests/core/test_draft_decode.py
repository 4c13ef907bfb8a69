"""Reduced-scale decoding goes straight to the detail the model uses and never below it, for the
sizes hospitals send (issue 13): a JPEG decodes at the smallest libjpeg scale that still holds
`detail_size`; a PNG decodes at full size and gives the same model input as before; the
classifier and `decode_for_model` (the benchmark's and tools' path) decode alike."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from dermserve.core.classifier import Classifier, Deadline
from dermserve.core.image.decoding import decode_for_model, decode_image, draft_for_input
from dermserve.core.image.limits import ImageLimits
from dermserve.core.image.opening import open_image
from dermserve.core.model_config import InputSpec
from dermserve.core.preprocessing import detail_size, to_model_input
from tests.service.conftest import FakeBackend

RELEASED_INPUT = InputSpec(height=192, width=192, reference_pixels=200 * 150)
"""models/ham10000/2's input (its dermserve.json): the detail these tests hold the draft to."""
LIBJPEG_SCALES = (1, 2, 4, 8)  # the reductions Pillow's draft asks libjpeg for
HOSPITAL_SIZES = [(200, 150), (600, 450), (1024, 768), (4032, 3024), (3024, 4032)]


def grainy(size: tuple[int, int], image_format: str = "JPEG") -> bytes:
    rng = np.random.default_rng(3)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize(
        size, Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, np.int16) + rng.integers(-8, 9, (size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, image_format)
    return buffer.getvalue()


def drafted_size(data: bytes, spec: InputSpec) -> tuple[int, int]:
    image = open_image(data, ImageLimits())
    draft_for_input(image, spec)
    return image.size


@pytest.mark.parametrize("size", HOSPITAL_SIZES)
def test_a_jpeg_decodes_at_the_least_scale_that_keeps_the_detail(size: tuple[int, int]) -> None:
    # The detail preprocessing keeps, or all there is of a smaller image.
    wanted = detail_size(size, RELEASED_INPUT)
    needed = (min(size[0], wanted[0]), min(size[1], wanted[1]))
    width, height = drafted_size(grainy(size), RELEASED_INPUT)
    assert width >= needed[0] and height >= needed[1]  # never below the detail
    scale = size[0] / width
    finer = [s for s in LIBJPEG_SCALES if s > scale]
    if finer:  # the next libjpeg scale would have lost detail
        assert (math.ceil(size[0] / finer[0]) < needed[0]
                or math.ceil(size[1] / finer[0]) < needed[1])


def test_a_phone_photo_decodes_at_an_eighth() -> None:
    assert drafted_size(grainy((4032, 3024)), RELEASED_INPUT) == (504, 378)


def test_a_png_decodes_at_full_size_and_gives_the_same_input() -> None:
    data = grainy((600, 450), "PNG")
    assert drafted_size(data, RELEASED_INPUT) == (600, 450)
    full = to_model_input(decode_image(data, ImageLimits()), RELEASED_INPUT)
    np.testing.assert_array_equal(decode_for_model(data, ImageLimits(), RELEASED_INPUT), full)


def test_the_draft_input_stays_close_to_the_full_decode() -> None:
    data = grainy((4032, 3024))
    full = to_model_input(decode_image(data, ImageLimits()), RELEASED_INPUT)
    drafted = decode_for_model(data, ImageLimits(), RELEASED_INPUT)
    assert drafted.shape == full.shape == (192, 192, 3)
    assert np.abs(full.astype(np.int16) - drafted).mean() < 2.0  # intensity levels of 255


def test_the_classifier_decodes_as_decode_for_model() -> None:
    data = grainy((1024, 768))
    classifier = Classifier(FakeBackend(), "ham10000", ImageLimits())
    opened = classifier.open(data, Deadline(None))
    via_classifier = classifier.decode(opened, RELEASED_INPUT, Deadline(None))
    np.testing.assert_array_equal(
        via_classifier, decode_for_model(data, ImageLimits(), RELEASED_INPUT))

