"""The hostile corpus, generated at run time (nothing committed): images, references, manifests
and request ids. Sizes scale with `quick`: `make test` stays fast, `make attack` is thorough.
The large and many-scan JPEGs are the decode tests' own (tests/hostile_images.py)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from devtools.dicom_sample import photograph_dataset, to_bytes
from tests import hostile_images as decode_corpus


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


def scan_bomb(side: int, extra_scans: int) -> bytes:
    """A progressive JPEG of one flat colour, `side` pixels wide, whose last scan (a few dozen
    bytes) is repeated `extra_scans` times: libjpeg walks the whole image for each, so a 6000
    pixel one with 3,000 extra scans costs about a minute of CPU in 300 KB."""
    flat = Image.new("RGB", (side, side * 3 // 4), (180, 90, 60))
    return decode_corpus.many_scan_jpeg(encode(flat, progressive=True), extra_scans)


def large_jpegs() -> list[tuple[str, bytes]]:
    """40-megapixel CMYK and EXIF-rotated JPEGs (the service's pixel limit): each cost a full
    160 MB decode and as much again per conversion or rotation before decoding was reduced."""
    return [("cmyk-40mp", decode_corpus.large_cmyk_jpeg()),
            ("exif-rotated-40mp", decode_corpus.large_rotated_jpeg())]


MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the stack's image limit (its default)


def photograph_dicom(seed: int = 0) -> bytes:
    """A DICOM photograph the service accepts (uncompressed RGB, 200x150)."""
    return to_bytes(photograph_dataset(photo(200, 150, seed=seed), "uncompressed-rgb"))


def dicom_bombs() -> list[tuple[str, bytes, str]]:
    """Files filled to the image limit that pydicom would turn into a million objects (issue
    26: +0.9 GB and 17 s each), polyglots and JPEG junk, with the reason each must get."""
    base = photograph_dicom()
    nested = base + (b"\xe1\x7f\x10\x00SQ\x00\x00\xff\xff\xff\xff"
                     + decode_corpus.EMPTY_ITEM[:4] + b"\xff\xff\xff\xff") * 5000
    return [
        ("dicom-1.3m-empty-items", decode_corpus.with_item_bomb(base, MAX_IMAGE_BYTES),
         "DICOM_TOO_COMPLEX"),
        ("dicom-1.3m-private-elements", decode_corpus.with_element_bomb(base, MAX_IMAGE_BYTES),
         "DICOM_TOO_COMPLEX"),
        ("dicom-nested-5000-deep", nested, "DICOM_TOO_COMPLEX"),
        ("png-hiding-dicom", decode_corpus.png_polyglot(encode(photo(200, 150), "PNG"), base),
         "AMBIGUOUS_FORMAT"),
        ("jpeg-hiding-dicom", decode_corpus.jpeg_polyglot(good_jpeg(), base), "AMBIGUOUS_FORMAT"),
        ("jpeg-10mib-junk", decode_corpus.jpeg_junk_prefix(MAX_IMAGE_BYTES - 3),
         "CORRUPT_IMAGE"),
    ]


def hostile_images(quick: bool) -> list[tuple[str, bytes]]:
    # Noise compresses badly: at 2,000 pixels a side these stay under the 10 MiB message
    # limit (larger ones only meet gRPC's own RESOURCE_EXHAUSTED). 40 MP: large_jpegs().
    big = 2000
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
    ]


FORGED_LOG_LINE = "CRITICAL service.auth token accepted for admin"
"""What a request id with a newline tried to start a log line with."""


def request_ids(quick: bool) -> list[tuple[str, str]]:
    ids = [
        ("newline-forged-log", "abc\n" + FORGED_LOG_LINE),
        ("carriage-return-forged-log", "abc\r" + FORGED_LOG_LINE),
        ("control-chars", "\x1b[31mred\x07\x00"),
        ("bidi-override", "rtl\u202eoverride"),
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


def race_tree(root: Path, outside: Path, files: int) -> list[str]:
    """`files` images under root/race/dir/ and one at root/race/swap.jpg, and the same names
    under `outside`, a directory beside the roots: the references a job is submitted with."""
    inside_dir, outside_dir = root / "race" / "dir", outside / "race" / "dir"
    for directory in (inside_dir, outside_dir):
        directory.mkdir(parents=True)
    for index in range(files):
        for directory in (inside_dir, outside_dir):
            (directory / f"{index}.jpg").write_bytes(good_jpeg())
    for base in (root, outside):
        (base / "race" / "swap.jpg").write_bytes(good_jpeg())
    return [*(f"race/dir/{index}.jpg" for index in range(files)), "race/swap.jpg"]


def swap_for_symlinks(root: Path, outside: Path) -> None:
    """After submission: the directory component and the file become symlinks leading outside
    the roots, under the names the job stored (what renameat2's exchange did in a race)."""
    (root / "race" / "dir").rename(root / "race" / "dir-moved")
    (root / "race" / "dir").symlink_to(outside / "race" / "dir", target_is_directory=True)
    (root / "race" / "swap.jpg").unlink()
    (root / "race" / "swap.jpg").symlink_to(outside / "race" / "swap.jpg")


def heavy_jpeg() -> bytes:
    """About 0.8 MB of noise: a stream of these that the server read without bound would
    grow its memory by gigabytes."""
    return encode(photo(700, 700, seed=1), quality=95)
