"""Image validation: untrusted bytes in, a fully decoded RGB image out, or InvalidImage with a
stable reason. Pillow only (no grpc, no TensorFlow), so the batch worker runs the same checks.

Order of checks, cheapest first, so nothing large is decoded before it is known to be sane:

| input                                    | decision  | reason                |
|------------------------------------------|-----------|-----------------------|
| no bytes                                 | reject    | EMPTY_IMAGE           |
| more than `max_bytes`                    | reject    | IMAGE_TOO_LARGE       |
| not JPEG, PNG or DICOM by content (GIF,  | reject    | UNSUPPORTED_FORMAT    |
| WebP, BMP, TIFF, random bytes), whatever |           |                       |
| the caller claims                        |           |                       |
| JPEG or PNG with `DICM` at byte 128      | reject    | AMBIGUOUS_FORMAT      |
| DICOM (`DICM` at byte 128)               | its own   | core/dicom.py's table |
| over `max_jpeg_junk_bytes` of junk       | reject    | CORRUPT_IMAGE         |
| between a JPEG's header markers          |           |                       |
| header unreadable                        | reject    | CORRUPT_IMAGE         |
| width*height over `max_pixels` (from the | reject    | TOO_MANY_PIXELS       |
| header, before decoding: bombs)          |           |                       |
| long/short side over `max_aspect_ratio`  | reject    | BAD_ASPECT_RATIO      |
| a side under `min_side` (e.g. 1x1)       | reject    | IMAGE_TOO_SMALL       |
| more than one frame (APNG)               | reject    | MULTI_FRAME           |
| progressive JPEG with more than          | reject    | TOO_MANY_SCANS        |
| `max_jpeg_scans` scans (CPU bomb)        |           |                       |
| truncated or corrupt data (full decode)  | reject    | CORRUPT_IMAGE         |
| grayscale (L, 1, I;16, LA)               | reject    | UNSUPPORTED_COLOR     |
| any transparent pixel (RGBA, LA, tRNS)   | reject    | TRANSPARENT_IMAGE     |
| fully opaque alpha channel               | convert   | alpha dropped         |
| palette (P)                              | convert   | expanded to RGB       |
| CMYK JPEG                                | convert   | to RGB                |
| 16 bit per channel RGB PNG               | convert   | Pillow keeps 8 bits   |
| multi-picture JPEG (MPO, phone cameras)  | convert   | primary image used    |
| EXIF orientation                         | convert   | applied (upright)     |

Memory: a JPEG is decoded at reduced scale (`draft`) when the caller says how much detail it needs
(`min_size`): libjpeg scales by 1/2, 1/4 or 1/8 while decoding, so a 40-megapixel photo costs
~0.6 megapixels. With a `PixelBudget`, at most that many pixels are alive at once across threads,
counting every full-size copy (conversion, rotation: `PEAK_BUFFERS`); a call that cannot get its
share in time fails with ResourceExhausted (DECODE_BUSY, retryable). The caller holds the share
until the image is reduced to what it keeps (service/decoding.py: the model input).

CPU: the scan count of a progressive JPEG is checked before decoding (each scan walks every block
of the image again), and with a `check_deadline` the decoder stops between blocks of input once
the call's deadline has passed.

Why: the model was trained on 8-bit colour dermatoscopy. Grey images lack the colour cues it
relies on and would be classified confidently and wrongly, so they are refused; transparent
pixels hide content behind arbitrary colours, so they are refused too. Palette, CMYK, opaque
alpha, 16-bit colour and EXIF rotation lose nothing the model uses, so they are converted. An
animation has no single image to diagnose. Multi-picture JPEGs are what many phones write: their
first picture is the photograph.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from core import defaults
from core.config import setting
from core.errors import InvalidImage, ResourceExhausted

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})
CONVERTIBLE_MODES = frozenset({"RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr"})

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                 IndexError, TypeError)
"""What Pillow's decoders raise on broken data (truncation is an OSError)."""

JPEG_SOS = 0xDA  # start of scan
JPEG_EOI = 0xD9  # end of image
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""Where a scan's entropy-coded data ends: 0xFF followed by neither a stuffed zero, a restart
marker nor another fill byte."""

PEAK_BUFFERS = 2
"""Full-size pixel buffers alive at once while one image is decoded and reduced: the decoded
image and one copy of it (the EXIF rotation, the colour conversion or the resize's first pass).
Each copy replaces the image it was made from before the next one is made."""

DEADLINE_CHECK_BYTES = 64 * 1024
"""Bytes read between two deadline checks: the block Pillow feeds a decoder."""

DeadlineCheck = Callable[[], None]
"""Raises (BackendTimeout) once the call's deadline has passed."""


class DeadlineReader(io.BytesIO):
    """The image bytes as Pillow reads them. The decoder takes its input in blocks of 64 KiB and
    a progressive JPEG does its work as its scans arrive, so checking the deadline per block of
    input stops a slow decode soon after the deadline instead of at its end. Per block, not per
    read: Pillow's header parser reads a byte at a time, and a check per byte cost more than
    the parse (4 million checks for a JPEG of junk)."""

    def __init__(self, data: bytes, check_deadline: DeadlineCheck | None) -> None:
        super().__init__(data)
        self._check_deadline = check_deadline
        self._unchecked = DEADLINE_CHECK_BYTES  # the first read checks

    def read(self, size: int | None = -1, /) -> bytes:
        if self._check_deadline is not None and self._unchecked >= DEADLINE_CHECK_BYTES:
            self._check_deadline()
            self._unchecked = 0
        chunk = super().read(size)
        self._unchecked += max(len(chunk), 1)  # an empty read at the end counts too
        return chunk


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must respect before anything decodes it fully."""

    max_bytes: int = setting(defaults.DEFAULT_MAX_IMAGE_BYTES, flag="max-image-bytes",
                             unit="bytes", help="encoded image limit")
    max_pixels: int = setting(defaults.DEFAULT_MAX_IMAGE_PIXELS, flag="max-image-pixels",
                              unit="pixels", help="pixel count limit")
    min_side: int = setting(defaults.DEFAULT_MIN_IMAGE_SIDE, flag="min-image-side",
                            unit="pixels", help="shortest side")
    max_aspect_ratio: float = setting(defaults.DEFAULT_MAX_ASPECT_RATIO, unit="long/short side",
                                      help="aspect ratio limit")
    max_jpeg_scans: int = setting(defaults.DEFAULT_MAX_JPEG_SCANS, unit="scans",
                                  help="progressive JPEG scans limit (CPU bombs carry thousands)")
    max_jpeg_junk_bytes: int = setting(defaults.DEFAULT_MAX_JPEG_JUNK_BYTES, unit="bytes",
                                       help="junk and fill bytes between a JPEG's header "
                                            "markers")
    max_dicom_elements: int = setting(defaults.DEFAULT_MAX_DICOM_ELEMENTS,
                                      unit="elements and items",
                                      help="DICOM data elements, items and fragments, all "
                                           "levels together")
    max_dicom_depth: int = setting(defaults.DEFAULT_MAX_DICOM_DEPTH, unit="sequences",
                                   help="DICOM sequences nested in one another")


def sniff_format(data: bytes) -> str:
    """'JPEG' or 'PNG' by content; anything else is refused, whatever the caller claims."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    raise InvalidImage("only JPEG, PNG and DICOM images are accepted", "UNSUPPORTED_FORMAT")


def check_size(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidImage("the image is empty", "EMPTY_IMAGE")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}",
                           "IMAGE_TOO_LARGE")


def open_header(data: bytes, image_format: str,
                check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """Read only the header; pixel data is decoded later, after the dimension checks."""
    try:
        # JPEG's plugin hands multi-picture files to MPO itself, so listing JPEG is enough.
        return Image.open(DeadlineReader(data, check_deadline), formats=[image_format])
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


def count_scans(data: bytes, limit: int) -> int:
    """The scans (SOS markers) of the first JPEG in `data`, counted up to `limit + 1`. Segments
    are skipped by their length, so an EXIF thumbnail's scans are not counted; a malformed
    stream ends the count and is left to the decoder to refuse."""
    pos, scans = len(JPEG_MAGIC) - 1, 0
    while scans <= limit and pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == JPEG_EOI:
            break
        if marker in JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == JPEG_SOS:
            scans += 1
            end_of_scan = JPEG_NEXT_MARKER.search(data, pos)
            if end_of_scan is None:
                break
            pos = end_of_scan.start()
    return scans


def junk_before_scan(data: bytes, limit: int) -> int:
    """Bytes between the header's markers of a JPEG that are neither a marker nor a segment
    (junk, fill bytes, stuffed zeros), up to its first scan, counted up to `limit + 1`. Pillow
    reads such bytes one at a time; a malformed segment ends the count (the decoder refuses
    it)."""
    pos, junk = len(JPEG_MAGIC) - 1, 0
    while junk <= limit and pos + 4 <= len(data):
        if data[pos] != 0xFF:
            end = min(len(data), pos + limit + 1 - junk)  # no further than the count needs
            following = data.find(b"\xff", pos, end)
            following = end if following == -1 else following
            junk, pos = junk + following - pos, following
            continue
        marker = data[pos + 1]
        if marker in (0x00, 0xFF):  # a stuffed zero or a fill byte: Pillow steps over it
            junk, pos = junk + 1, pos + 1
            continue
        if marker == JPEG_SOS or marker == JPEG_EOI:
            break
        pos += 2 if marker in JPEG_STANDALONE_MARKERS else \
            2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return junk


def check_junk(data: bytes, image_format: str, limits: ImageLimits) -> None:
    """Junk before a JPEG's first scan costs Pillow a read per byte: refused past a bound."""
    if image_format == "JPEG" and \
            junk_before_scan(data, limits.max_jpeg_junk_bytes) > limits.max_jpeg_junk_bytes:
        raise InvalidImage(f"the JPEG has more than {limits.max_jpeg_junk_bytes} bytes of junk "
                           "between its header's markers", "CORRUPT_IMAGE")


def check_scans(data: bytes, image_format: str, limits: ImageLimits) -> None:
    """Each scan of a progressive JPEG walks every block of the image again: thousands of tiny
    scans make a small file cost minutes of CPU, so they are counted before anything decodes."""
    if image_format == "JPEG" and count_scans(data, limits.max_jpeg_scans) > limits.max_jpeg_scans:
        raise InvalidImage(f"the JPEG has more than {limits.max_jpeg_scans} scans",
                           "TOO_MANY_SCANS")


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


def check_mode(image: Image.Image) -> None:
    """Refuse grey images from the header alone, before paying for a decode."""
    if image.mode in GRAY_MODES:
        raise InvalidImage(f"grayscale images ({image.mode}) are not accepted; the model needs "
                           "colour", "UNSUPPORTED_COLOR")
    if image.mode not in CONVERTIBLE_MODES:
        raise InvalidImage(f"colour mode {image.mode} is not supported", "UNSUPPORTED_COLOR")


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


def open_image(data: bytes, limits: ImageLimits,
               check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """Every check that needs no pixels; returns the image with its pixel data still encoded
    (a DICOM object's JPEG frame likewise; see core/dicom.py)."""
    check_size(data, limits)
    from core import dicom  # here, not at the top: core.dicom builds on this module's checks
    if dicom.is_dicom(data):
        if data.startswith((JPEG_MAGIC, PNG_MAGIC)):
            raise InvalidImage("the file is both a DICOM file and a JPEG or PNG image; only one "
                               "format per file is accepted", "AMBIGUOUS_FORMAT")
        return dicom.open_dicom(data, limits,
                                lambda frame: open_encoded(frame, limits, check_deadline),
                                check_deadline)
    return open_encoded(data, limits, check_deadline)


def open_encoded(data: bytes, limits: ImageLimits,
                 check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """open_image for a JPEG or PNG."""
    image_format = sniff_format(data)
    check_junk(data, image_format, limits)
    image = open_header(data, image_format, check_deadline)
    check_dimensions(*image.size, limits)
    check_frames(image, image_format)
    check_mode(image)
    check_scans(data, image_format, limits)
    return image


def reduce_scale(image: Image.Image, min_size: tuple[int, int]) -> None:
    """Have a JPEG decoded at the smallest scale (1/2, 1/4 or 1/8, done by libjpeg inside the
    IDCT) that still keeps `min_size` pixels each way; other formats decode at full size. Call
    before decoding: `image.size` then tells the size the decode will have."""
    image.draft(image.mode, min_size)


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
