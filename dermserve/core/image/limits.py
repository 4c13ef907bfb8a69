"""The bounds an image is held to before anything decodes it fully: its bytes, its pixels, its
sides and aspect, its JPEG scans and junk, its DICOM structure (each a setting, its default in
core/defaults.py), and the checks that every format shares. The rest of the table is in
core/image/opening.py (and core/image/dicom.py for DICOM files)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dermserve.core import defaults
from dermserve.core.config import setting
from dermserve.core.errors import InvalidImage

PEAK_BUFFERS = 2
"""Full-size pixel buffers alive at once while one image is decoded and reduced: the decoded
image and one copy of it (the EXIF rotation, the colour conversion or the resize's first pass).
Each copy replaces the image it was made from before the next one is made."""

DeadlineCheck = Callable[[], None]
"""Raises (BackendTimeout) once the call's deadline has passed."""


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


def check_size(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidImage("the image is empty", "EMPTY_IMAGE")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}",
                           "IMAGE_TOO_LARGE")


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """From a header (JPEG, PNG or DICOM Rows and Columns), before decoding: bombs."""
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
