"""A JPEG's marker structure walked in its bytes before Pillow reads it: the scans of a
progressive JPEG (each walks every block of the image again: a CPU bomb carries thousands) and the
junk between its header's markers (Pillow reads it a byte at a time). Segments are skipped by
their length; a malformed stream ends the walk and is left to the decoder to refuse. Nothing is
decoded here; core/image/opening.py applies the limits."""

from __future__ import annotations

import re

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_SOS = 0xDA  # start of scan
JPEG_EOI = 0xD9  # end of image
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""Where a scan's entropy-coded data ends: 0xFF followed by neither a stuffed zero, a restart
marker nor another fill byte."""


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
