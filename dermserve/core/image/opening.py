"""Opening: untrusted bytes in, an opened image out (its pixels still encoded), or InvalidImage
with a stable reason; the first step of the one way through an image (core/image/: open, then
decode in decoding.py; core/preprocessing.py makes the model input). No grpc, no TensorFlow, so
the batch worker runs the same checks. The format is judged by content and dispatched here: a
DICOM file to core/image/dicom.py, whose JPEG frame comes back through the JPEG checks below.

Order of checks, cheapest first, so nothing large is decoded before it is known to be sane (the
checks on decoded pixels follow in core/image/decoding.py's table):

| input                                    | decision  | reason                |
|------------------------------------------|-----------|-----------------------|
| no bytes                                 | reject    | EMPTY_IMAGE           |
| more than `max_bytes`                    | reject    | IMAGE_TOO_LARGE       |
| not JPEG, PNG or DICOM by content (GIF,  | reject    | UNSUPPORTED_FORMAT    |
| WebP, BMP, TIFF, random bytes), whatever |           |                       |
| the caller claims                        |           |                       |
| JPEG or PNG with `DICM` at byte 128      | reject    | AMBIGUOUS_FORMAT      |
| DICOM (`DICM` at byte 128)               | its own   | image/dicom.py table  |
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
| grayscale (L, 1, I;16, LA)               | reject    | UNSUPPORTED_COLOR     |
| multi-picture JPEG (MPO, phone cameras)  | convert   | primary image used    |

CPU: the scan count of a progressive JPEG is checked before decoding (each scan walks every block
of the image again: core/image/jpeg_scan.py), and with a `check_deadline` the reader stops between
blocks of input once the call's deadline has passed, while the header is read and later while the
pixels are decoded.

Memory: opening a JPEG or PNG decodes nothing; opening a DICOM file parses it and may convert its
uncompressed pixels, so the classifier holds `parse_share` of its decode budget meanwhile.

Why: the model was trained on 8-bit colour dermatoscopy. Grey images lack the colour cues it
relies on and would be classified confidently and wrongly, so they are refused. An animation has
no single image to diagnose. Multi-picture JPEGs are what many phones write: their first picture
is the photograph.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, UnidentifiedImageError

from dermserve.core.context import NO_CONTEXT, PatientContext
from dermserve.core.errors import InvalidImage
from dermserve.core.image import dicom
from dermserve.core.image.jpeg_scan import JPEG_MAGIC, count_scans, junk_before_scan
from dermserve.core.image.limits import (
    PEAK_BUFFERS,
    DeadlineCheck,
    ImageLimits,
    check_dimensions,
    check_size,
)
from dermserve.core.prediction import DicomReference

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
CONVERTIBLE_MODES = frozenset({"RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr"})

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                 IndexError, TypeError)
"""What Pillow's decoders raise on broken data (truncation is an OSError), reading a header here
or the pixels in core/image/decoding.py."""

DEADLINE_CHECK_BYTES = 64 * 1024
"""Bytes read between two deadline checks: the block Pillow feeds a decoder."""

DICOM_INFO_KEY = "dermserve.dicom"
"""Where an opened DICOM image carries its DicomReference (PIL's `info`): `dicom_source`."""
DICOM_CONTEXT_KEY = "dermserve.dicom_context"
"""Where it carries the patient context its tags give: `dicom_context`."""

PARSE_BYTES_PER_PIXEL = 3
"""How the budget counts a DICOM file while it is opened: its bytes as 8-bit RGB pixels, the
most pixels uncompressed pixel data of that size holds."""


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


def sniff_format(data: bytes) -> str:
    """'JPEG' or 'PNG' by content; anything else is refused, whatever the caller claims."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    raise InvalidImage("only JPEG, PNG and DICOM images are accepted", "UNSUPPORTED_FORMAT")


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


def check_frames(image: Image.Image, image_format: str) -> None:
    """An animated PNG has no single image to diagnose; a multi-picture JPEG's first is the
    photograph."""
    if image_format == "PNG" and getattr(image, "n_frames", 1) > 1:
        raise InvalidImage("animated images are not accepted", "MULTI_FRAME")


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


def check_mode(image: Image.Image) -> None:
    """Refuse grey images from the header alone, before paying for a decode."""
    if image.mode in GRAY_MODES:
        raise InvalidImage(f"grayscale images ({image.mode}) are not accepted; the model needs "
                           "colour", "UNSUPPORTED_COLOR")
    if image.mode not in CONVERTIBLE_MODES:
        raise InvalidImage(f"colour mode {image.mode} is not supported", "UNSUPPORTED_COLOR")


def parse_share(data: bytes) -> int:
    """The PixelBudget share of opening `data`: for a DICOM file pydicom's objects, and for
    uncompressed pixel data its converted array and image (PEAK_BUFFERS copies); 0 for other
    formats, whose opening decodes nothing."""
    if not dicom.is_dicom(data):
        return 0
    return len(data) // PARSE_BYTES_PER_PIXEL * PEAK_BUFFERS


def open_image(data: bytes, limits: ImageLimits,
               check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """Every check that needs no pixels; returns the image with its pixel data still encoded
    (a DICOM object's JPEG frame likewise; see `open_dicom`)."""
    check_size(data, limits)
    if dicom.is_dicom(data):
        if data.startswith((JPEG_MAGIC, PNG_MAGIC)):
            raise InvalidImage("the file is both a DICOM file and a JPEG or PNG image; only one "
                               "format per file is accepted", "AMBIGUOUS_FORMAT")
        return open_dicom(data, limits, check_deadline)
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


def open_dicom(data: bytes, limits: ImageLimits,
               check_deadline: DeadlineCheck | None = None) -> Image.Image:
    """A DICOM file's image after every check of core/image/dicom.py's table: its JPEG frame
    opened as a JPEG (pixels still encoded, decoded later within the decode budget) or its
    converted uncompressed pixels, carrying its DicomReference (`dicom_source`)."""
    content = dicom.read_dicom(data, limits, check_deadline)
    if isinstance(content.image, bytes):
        with dicom.corrupt_unless_ours():  # the deadline passing while the frame opens is ours
            image = open_encoded(content.image, limits, check_deadline)
        dicom.check_frame_size(image, content.size)
    else:
        image = content.image
    image.info[DICOM_INFO_KEY] = content.reference
    image.info[DICOM_CONTEXT_KEY] = content.context
    return image


def dicom_context(image: Image.Image) -> PatientContext:
    """The patient context an opened DICOM image's own tags give (NO_CONTEXT for any other)."""
    context = image.info.get(DICOM_CONTEXT_KEY)
    return context if isinstance(context, PatientContext) else NO_CONTEXT


def dicom_source(image: Image.Image) -> DicomReference | None:
    """Where an opened image came from, if it was a DICOM file: its UIDs, never its patient."""
    source = image.info.get(DICOM_INFO_KEY)
    return source if isinstance(source, DicomReference) else None
