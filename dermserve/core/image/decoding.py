"""Decoding: an opened image (core/image/opening.py: every check that needs no pixels passed)
in, fully decoded, upright and in RGB out, or InvalidImage with a stable reason:

| decoded image                            | decision  | reason                |
|------------------------------------------|-----------|-----------------------|
| truncated or corrupt data (full decode)  | reject    | CORRUPT_IMAGE         |
| any transparent pixel (RGBA, LA, tRNS)   | reject    | TRANSPARENT_IMAGE     |
| fully opaque alpha channel               | convert   | alpha dropped         |
| palette (P)                              | convert   | expanded to RGB       |
| CMYK JPEG                                | convert   | to RGB                |
| 16 bit per channel RGB PNG               | convert   | Pillow keeps 8 bits   |
| EXIF orientation                         | convert   | applied (upright)     |

Memory: a JPEG is decoded at reduced scale (`draft`) when the caller says how much detail it needs
(`min_size`; the classifier's is what core/preprocessing.py keeps, `draft_for_input`): libjpeg
scales by 1/2, 1/4 or 1/8 while decoding, so a 40-megapixel photo costs ~0.6 megapixels. With a
`PixelBudget`, at most that many pixels are alive at once across threads, counting every
full-size copy (conversion, rotation: `PEAK_BUFFERS`); a call that cannot get its share in time
fails with ResourceExhausted (DECODE_BUSY, retryable). The caller holds the share until the image
is reduced to what it keeps (core/classifier.py: the model input).

CPU: with a `check_deadline` the decoder stops between blocks of input once the call's deadline
has passed (the opened image reads through core/image/opening.py's `DeadlineReader`).

Why: transparent pixels hide content behind arbitrary colours, so they are refused. Palette,
CMYK, opaque alpha, 16-bit colour and EXIF rotation lose nothing the model uses, so they are
converted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from dermserve.core.errors import InvalidImage, ResourceExhausted
from dermserve.core.image.limits import PEAK_BUFFERS, DeadlineCheck, ImageLimits
from dermserve.core.image.opening import DECODE_ERRORS, open_image
from dermserve.core.model_config import InputSpec
from dermserve.core.preprocessing import detail_size, to_model_input

ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})


def decode_fully(image: Image.Image) -> Image.Image:
    """Force a full decode so truncation and corruption surface here, not inside the model."""
    try:
        image.load()
        # In place: the rotated copy replaces the decoded pixels at once (PEAK_BUFFERS).
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except Image.DecompressionBombError as exc:
        raise InvalidImage("the image declares too many pixels", "TOO_MANY_PIXELS") from exc
    except DECODE_ERRORS as exc:
        raise InvalidImage("the image data is truncated or corrupt", "CORRUPT_IMAGE") from exc


def has_transparency(image: Image.Image) -> bool:
    if image.mode in ALPHA_MODES:
        alpha = image.getchannel("A")
        low, _ = alpha.getextrema()  # one band: (min, max)
        return bool(low != 255)
    if image.mode == "P" and "transparency" in image.info:
        return has_transparency(image.convert("RGBA"))
    return False


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert what loses nothing the model uses; refuse transparent images. Takes ownership of
    `image`: once converted, its pixels are freed at once, so only one copy is alive."""
    if has_transparency(image):
        raise InvalidImage("images with transparent pixels are not accepted",
                           "TRANSPARENT_IMAGE")
    if image.mode == "RGB":
        return image
    converted = image.convert("RGB")
    image.close()
    return converted


def reduce_scale(image: Image.Image, min_size: tuple[int, int]) -> None:
    """Have a JPEG decoded at the smallest scale (1/2, 1/4 or 1/8, done by libjpeg inside the
    IDCT) that still keeps `min_size` pixels each way; other formats decode at full size. Call
    before decoding: `image.size` then tells the size the decode will have."""
    image.draft(image.mode, min_size)


def draft_for_input(image: Image.Image, spec: InputSpec) -> None:
    """Have an opened, not yet decoded JPEG decode at the least scale (1/2, 1/4 or 1/8) that still
    holds `detail_size`: straight to the detail `to_model_input` keeps, never below it."""
    reduce_scale(image, detail_size(image.size, spec))


def budget_share(image: Image.Image) -> int:
    """The pixels to hold in a PixelBudget while `image` is decoded and reduced (call after
    `reduce_scale`)."""
    width, height = image.size
    return width * height * PEAK_BUFFERS


def decode_rgb(image: Image.Image, check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """Decode an opened image fully, upright and in RGB (taking ownership of `image`)."""
    decoded = decode_fully(image)
    if check_deadline is not None:
        check_deadline()
    return to_rgb(decoded)


class PixelBudget:
    """Bounds the pixels alive in decoders at once across threads, so that many large images
    arriving together cannot exhaust memory (Pillow holds 4 bytes per CMYK or RGB pixel). A
    call that cannot get its share within its timeout fails with RESOURCE_EXHAUSTED
    (retryable). `peak` is the most pixels ever held at once, for tests and benchmarks."""

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError("the pixel budget must be positive")
        self.max_pixels = max_pixels
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None) -> Iterator[None]:
        share = min(pixels, self.max_pixels)  # an image larger than the budget may go alone
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + share <= self.max_pixels, timeout):
                raise ResourceExhausted("too many large images are being decoded; retry",
                                        "DECODE_BUSY")
            self.in_use += share
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= share
                self._cond.notify_all()


def decode_image(data: bytes, limits: ImageLimits, min_size: tuple[int, int] | None = None,
                 check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """Validate `data` and return it as a fully decoded, upright RGB image; a JPEG at reduced
    scale when `min_size` allows. Unbudgeted: the classifier's path (core/classifier.py)
    holds a PixelBudget share until the image is the model input."""
    image = open_image(data, limits, check_deadline)
    if min_size is not None:
        reduce_scale(image, min_size)
    return decode_rgb(image, check_deadline)


def decode_for_model(data: bytes, limits: ImageLimits, spec: InputSpec,
                     check_deadline: DeadlineCheck | None = None) -> np.ndarray:
    """Validate and decode `data` into `spec`'s model input the way the classifier does, without
    a decode budget (benchmarks, tools): every check, the reduced-scale decode, preprocessing."""
    image = open_image(data, limits, check_deadline)
    draft_for_input(image, spec)
    return to_model_input(decode_rgb(image, check_deadline), spec)
