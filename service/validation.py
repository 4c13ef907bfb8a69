"""Image validation: untrusted bytes in, a fully decoded RGB image out, or InvalidImage with a
stable reason. Pillow only (no grpc, no TensorFlow), so the batch worker runs the same checks.

Order of checks, cheapest first, so nothing large is decoded before it is known to be sane:

| input                                    | decision  | reason                |
|------------------------------------------|-----------|-----------------------|
| no bytes                                 | reject    | EMPTY_IMAGE           |
| more than `max_bytes`                    | reject    | IMAGE_TOO_LARGE       |
| not JPEG or PNG by magic bytes (GIF,     | reject    | UNSUPPORTED_FORMAT    |
| WebP, BMP, TIFF, random bytes), whatever |           |                       |
| the caller claims                        |           |                       |
| header unreadable                        | reject    | CORRUPT_IMAGE         |
| width*height over `max_pixels` (from the | reject    | TOO_MANY_PIXELS       |
| header, before decoding: bombs)          |           |                       |
| long/short side over `max_aspect_ratio`  | reject    | BAD_ASPECT_RATIO      |
| a side under `min_side` (e.g. 1x1)       | reject    | IMAGE_TOO_SMALL       |
| more than one frame (APNG)               | reject    | MULTI_FRAME           |
| truncated or corrupt data (full decode)  | reject    | CORRUPT_IMAGE         |
| grayscale (L, 1, I;16, LA)               | reject    | UNSUPPORTED_COLOR     |
| any transparent pixel (RGBA, LA, tRNS)   | reject    | TRANSPARENT_IMAGE     |
| fully opaque alpha channel               | convert   | alpha dropped         |
| palette (P)                              | convert   | expanded to RGB       |
| CMYK JPEG                                | convert   | to RGB                |
| 16 bit per channel RGB PNG               | convert   | Pillow keeps 8 bits   |
| multi-picture JPEG (MPO, phone cameras)  | convert   | primary image used    |
| EXIF orientation                         | convert   | applied (upright)     |

Memory: with a `PixelBudget`, at most that many pixels are decoded at once across threads; a
call that cannot get its share in time fails with ResourceExhausted (DECODE_BUSY, retryable).

Why: the model was trained on 8-bit colour dermatoscopy. Grey images lack the colour cues it
relies on and would be classified confidently and wrongly, so they are refused; transparent
pixels hide content behind arbitrary colours, so they are refused too. Palette, CMYK, opaque
alpha, 16-bit colour and EXIF rotation lose nothing the model uses, so they are converted. An
animation has no single image to diagnose. Multi-picture JPEGs are what many phones write: their
first picture is the photograph.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from service import defaults
from service.errors import InvalidImage, ResourceExhausted

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})
CONVERTIBLE_MODES = frozenset({"RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr"})

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                 IndexError, TypeError)
"""What Pillow's decoders raise on broken data (truncation is an OSError)."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must respect before anything decodes it fully."""

    max_bytes: int = defaults.DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = defaults.DEFAULT_MAX_IMAGE_PIXELS
    min_side: int = defaults.DEFAULT_MIN_IMAGE_SIDE
    max_aspect_ratio: float = defaults.DEFAULT_MAX_ASPECT_RATIO


def sniff_format(data: bytes) -> str:
    """'JPEG' or 'PNG' by content; anything else is refused, whatever the caller claims."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    raise InvalidImage("only JPEG and PNG images are accepted", "UNSUPPORTED_FORMAT")


def check_size(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidImage("the image is empty", "EMPTY_IMAGE")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}",
                           "IMAGE_TOO_LARGE")


def open_header(data: bytes, image_format: str) -> Image.Image:
    """Read only the header; pixel data is decoded later, after the dimension checks."""
    try:
        # JPEG's plugin hands multi-picture files to MPO itself, so listing JPEG is enough.
        return Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as exc:
        raise InvalidImage("the image declares too many pixels", "TOO_MANY_PIXELS") from exc
    except (UnidentifiedImageError, *DECODE_ERRORS) as exc:
        raise InvalidImage(f"the {image_format} header cannot be read", "CORRUPT_IMAGE") from exc


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidImage(f"the image has {width}x{height} pixels; the limit is "
                           f"{limits.max_pixels} pixels", "TOO_MANY_PIXELS")
    short, long = sorted((width, height))
    if short > 0 and long / short > limits.max_aspect_ratio:
        raise InvalidImage(f"the image is {width}x{height}; the longer side may be at most "
                           f"{limits.max_aspect_ratio:g} times the shorter", "BAD_ASPECT_RATIO")
    if short < limits.min_side:
        raise InvalidImage(f"the image is {width}x{height}; each side needs at least "
                           f"{limits.min_side} pixels", "IMAGE_TOO_SMALL")


def check_frames(image: Image.Image, image_format: str) -> None:
    """An animated PNG has no single image to diagnose; a multi-picture JPEG's first is the
    photograph."""
    if image_format == "PNG" and getattr(image, "n_frames", 1) > 1:
        raise InvalidImage("animated images are not accepted", "MULTI_FRAME")


def decode_fully(image: Image.Image) -> Image.Image:
    """Force a full decode so truncation and corruption surface here, not inside the model."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: a copy costs ~1 ms per image
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


def check_mode(image: Image.Image) -> None:
    """Refuse grey images from the header alone, before paying for a decode."""
    if image.mode in GRAY_MODES:
        raise InvalidImage(f"grayscale images ({image.mode}) are not accepted; the model needs "
                           "colour", "UNSUPPORTED_COLOR")
    if image.mode not in CONVERTIBLE_MODES:
        raise InvalidImage(f"colour mode {image.mode} is not supported", "UNSUPPORTED_COLOR")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert what loses nothing the model uses; refuse transparent images."""
    if has_transparency(image):
        raise InvalidImage("images with transparent pixels are not accepted",
                           "TRANSPARENT_IMAGE")
    return image if image.mode == "RGB" else image.convert("RGB")


class PixelBudget:
    """Bounds the pixels being decoded at once across threads, so that many large images arriving
    together cannot exhaust memory (Pillow holds about 4 bytes per decoded RGB pixel). A call
    that cannot get its share within its timeout fails with RESOURCE_EXHAUSTED (retryable)."""

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError("the pixel budget must be positive")
        self.max_pixels = max_pixels
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None) -> Iterator[None]:
        share = min(pixels, self.max_pixels)  # an image larger than the budget may go alone
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + share <= self.max_pixels, timeout):
                raise ResourceExhausted("too many large images are being decoded; retry",
                                        "DECODE_BUSY")
            self.in_use += share
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= share
                self._cond.notify_all()


def decode_image(data: bytes, limits: ImageLimits, budget: PixelBudget | None = None,
                 timeout: float | None = None) -> Image.Image:
    """Validate `data` and return it as a fully decoded, upright RGB image. With a `budget`, the
    decoding waits (up to `timeout` seconds) for its share of the pixels in flight."""
    check_size(data, limits)
    image_format = sniff_format(data)
    image = open_header(data, image_format)
    check_dimensions(*image.size, limits)
    check_frames(image, image_format)
    check_mode(image)
    if budget is None:
        return to_rgb(decode_fully(image))
    with budget.hold(image.size[0] * image.size[1], timeout):
        return to_rgb(decode_fully(image))
