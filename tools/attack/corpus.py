"""The hostile corpus, generated at run time (nothing committed): images, references, manifests
and request ids. Sizes scale with `quick`: `make test` stays fast, `make attack` is thorough."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def good_jpeg() -> bytes:
    return encode(photo(200, 150))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a few compressed zero rows."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is rewritten to claim width x height."""
    data = bytearray(encode(photo(64, 64)))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
    raise ValueError("no SOF marker")


def exif_rotated(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    return encode(photo(width, height), exif=exif.tobytes())


def many_scans(repeats: int, side: int) -> bytes:
    """A progressive JPEG with its smallest scan repeated `repeats` times before the end: each
    repeat is decoded again over the whole image (a CPU bomb in a few hundred KB)."""
    data = encode(Image.new("RGB", (side, side * 3 // 4), (180, 90, 60)), progressive=True)
    end = data.rfind(b"\xff\xd9")
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"]
    scans = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    smallest = min(scans, key=len)
    return data[:end] + smallest * repeats + data[end:]


def hostile_images(quick: bool) -> list[tuple[str, bytes]]:
    big = 2000 if quick else 6000  # a side of the CMYK and rotated images, pixels
    good = good_jpeg()
    return [
        ("empty", b""),
        ("truncated-jpeg", good[: len(good) // 2]),
        ("non-image", os.urandom(4096)),
        ("gif", encode(photo(100, 100), "GIF")),
        ("text-claiming-jpeg", b"\xff\xd8\xff" + b"<?php system($_GET['c']); ?>"),
        ("png-bomb-header", png_bomb(100_000, 100_000)),
        ("jpeg-huge-dims", jpeg_with_dimensions(65_000, 65_000)),
        ("tiny", encode(photo(1, 1))),
        ("panorama", encode(photo(2000, 100))),
        ("cmyk", encode(photo(big, big * 3 // 4, "CMYK"))),
        ("exif-rotated", exif_rotated(big, big * 3 // 4)),
        ("grayscale", encode(photo(200, 150, "L"))),
        ("rgba-transparent", encode(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), "PNG")),
        ("progressive-many-scans", many_scans(100, 2000) if quick else many_scans(3000, 6000)),
    ]


def request_ids(quick: bool) -> list[tuple[str, str]]:
    ids = [
        ("newline-forged-log", "abc\nCRITICAL service.auth token accepted for admin"),
        ("control-chars", "\x1b[31mred\x07\x00"),
        ("over-128", "x" * 129),
        ("one-megabyte", "x" * (1024 * 1024 if not quick else 256 * 1024)),
    ]
    return ids if quick else [*ids, ("five-megabytes", "x" * (5 * 1024 * 1024))]


def reference_tree(root: Path) -> None:
    """Files inside the input root that the reference attacks point at or through."""
    (root / "ok").mkdir(exist_ok=True)
    (root / "ok" / "a.jpg").write_bytes(good_jpeg())
    (root / "=HYPERLINK(\"x\",\"y\").jpg").write_bytes(good_jpeg())
    os.symlink("/etc", root / "out", target_is_directory=True)
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    latin1 = os.fsencode(root) + b"/caf\xe9.jpg"  # a Latin-1 name: not UTF-8
    with open(latin1, "wb") as handle:
        handle.write(good_jpeg())
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbfpath\nok/a.jpg\n")
    (root / "huge-field.csv").write_text('path\n"' + "a" * (200 * 1024) + '"\n')


def hostile_references() -> list[tuple[str, list[str]]]:
    return [
        ("dot-dot", ["../../etc/passwd"]),
        ("absolute", ["/etc/passwd"]),
        ("symlink-out", ["out/passwd"]),
        ("symlink-loop", ["loop-a"]),
        ("nul", ["ok/a.jpg\x00.png"]),
        ("long-path", ["a/" * 2500]),
        ("hyperlink-name", ['=HYPERLINK("x","y").jpg']),
        ("latin1-in-directory", ["."]),  # the expansion meets a Latin-1 file name
    ]


def hostile_manifests() -> list[tuple[str, str, str]]:
    """(name, kind, value): kind 'path' names a file in the root, 'csv' is inline text."""
    return [
        ("bom-manifest", "path", "bom.csv"),
        ("huge-field-manifest", "path", "huge-field.csv"),
        ("manifest-outside", "path", "/etc/passwd"),
        ("inline-cr", "csv", "\r0"),
        ("inline-huge-field", "csv", 'path\n"' + "a" * (200 * 1024)),
        ("inline-dot-dot", "csv", "path\n../../../etc/shadow\n"),
    ]
