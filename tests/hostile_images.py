"""Large and hostile images made in the test (nothing downloaded), and a peak-memory meter.

The large ones are 40 megapixels, the service's default limit, with smooth content so that they
stay a few MB encoded; decoding one at full size costs 160 MB in Pillow, a copy as much again."""

from __future__ import annotations

import io
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from devtools import proc

LARGE_SIZE = (7744, 5164)  # 39.99 megapixels
EXIF_ORIENTATION = 0x0112
ROTATE_90_CLOCKWISE = 6  # "rotate 90 degrees clockwise to display"


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def smooth_bands(size: tuple[int, int], bands: int) -> list[Image.Image]:
    """`bands` different gradients of `size`: photo-like colour that compresses well."""
    ramp = Image.linear_gradient("L").resize(size)
    turned = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    radial = Image.radial_gradient("L").resize(size)
    inverse = ramp.point(lambda value: 255 - value)
    return [ramp, turned, radial, inverse][:bands]


def large_cmyk_jpeg(size: tuple[int, int] = LARGE_SIZE) -> bytes:
    return encode(Image.merge("CMYK", smooth_bands(size, 4)), quality=85)


def large_rotated_jpeg(size: tuple[int, int] = LARGE_SIZE) -> bytes:
    """An RGB JPEG whose EXIF says to rotate it upright (what phones write)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CLOCKWISE
    return encode(Image.merge("RGB", smooth_bands(size, 3)), exif=exif.tobytes(), quality=85)


def large_opaque_rgba_png(size: tuple[int, int]) -> bytes:
    """An RGBA PNG with a fully opaque alpha channel: it is converted to RGB, a full copy."""
    bands = smooth_bands(size, 3)
    return encode(Image.merge("RGBA", [*bands, Image.new("L", size, 255)]), "PNG",
                  compress_level=1)


def many_scan_jpeg(base: bytes, extra_scans: int) -> bytes:
    """`base` (a progressive JPEG) with its last scan repeated `extra_scans` times: libjpeg
    warns and decodes every one of them, walking the whole image each time."""
    end = base.rindex(b"\xff\xd9")
    last_scan = base[base.rindex(b"\xff\xda"):end]
    return base[:end] + last_scan * extra_scans + base[end:]


def scan_count(data: bytes) -> int:
    """Start-of-scan markers in `data` (no APP segment here holds a thumbnail)."""
    return len(re.findall(b"\xff\xda", data))


@dataclass
class PeakMemory:
    baseline_bytes: int = 0
    peak_bytes: int = 0

    @property
    def growth_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """This process's peak resident memory over the block, above what it held at the start
    (devtools/proc.py: the reset makes the current RSS the high-water mark)."""
    pid = os.getpid()
    proc.reset_peak(pid)
    meter = PeakMemory(baseline_bytes=proc.rss_bytes(pid) or 0)
    yield meter
    meter.peak_bytes = proc.peak_bytes(pid) or 0


def jpeg_junk_prefix(junk_bytes: int, fill: int = 0x00) -> bytes:
    """`FF D8 FF` and then `junk_bytes` bytes of `fill` and nothing else: Pillow skips junk
    before a marker one byte at a time."""
    return b"\xff\xd8\xff" + bytes([fill]) * junk_bytes


EMPTY_ITEM = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # (FFFE,E000), length 0
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD)
ITEM_BYTES = len(EMPTY_ITEM)


def fill_count(base: bytes, size: int, overhead: int = 0) -> int:
    """How many 8-byte items or elements fit after `base` in a file of `size` bytes."""
    return (size - len(base) - overhead) // ITEM_BYTES


def with_item_bomb(data: bytes, size: int) -> bytes:
    """An explicit VR file with one undefined-length private sequence after its pixel data,
    holding as many empty items as fit in `size` bytes (the bomb of issue 26: pydicom builds a
    Dataset per item)."""
    opening = b"\xe1\x7f\x10\x00SQ\x00\x00\xff\xff\xff\xff"  # (7FE1,0010) SQ, undefined length
    count = fill_count(data, size, len(opening) + len(SEQUENCE_END))
    return data + opening + EMPTY_ITEM * count + SEQUENCE_END


def with_element_bomb(data: bytes, size: int) -> bytes:
    """An explicit VR file with as many empty private LO elements after its pixel data as fit in
    `size` bytes, each with its own tag in the odd (private) groups from 7FE1."""
    count = fill_count(data, size)
    return data + b"".join(
        (0x7FE1 + 2 * (index // 0xFF00)).to_bytes(2, "little")
        + (0x0100 + index % 0xFF00).to_bytes(2, "little") + b"LO\x00\x00"
        for index in range(count))


def png_polyglot(png: bytes, dicom: bytes) -> bytes:
    """`png` with `dicom` hidden in a private ancillary chunk placed so that `DICM` lands at byte
    128: Pillow reads the PNG (it skips the chunk), a DICOM reader reads the DICOM."""
    head, rest = png[:33], png[33:]  # the signature and IHDR
    padding = 128 - len(head) - 8  # the chunk's length and type come first
    payload = bytes(padding) + dicom[128:]
    chunk_type = b"dcMp"  # lower-case first letter: ancillary, safe to skip
    crc = zlib.crc32(chunk_type + payload).to_bytes(4, "big")
    return head + len(payload).to_bytes(4, "big") + chunk_type + payload + crc + rest


def jpeg_polyglot(jpeg: bytes, dicom: bytes) -> bytes:
    """`jpeg` with `dicom` in an APP15 segment right after SOI, `DICM` at byte 128 (a segment
    holds at most 65533 bytes, so only the DICOM file's start fits; enough to be recognised)."""
    payload = (bytes(128 - 6) + dicom[128:])[:65533]
    return jpeg[:2] + b"\xff\xef" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]
