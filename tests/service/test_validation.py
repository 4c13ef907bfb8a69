"""Every validation decision, over a real gRPC channel to the real server: rejections with
INVALID_ARGUMENT and their reason, conversions with a result."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import FakeBackend, Running, encode, pb, photo, reason_of


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header_only(width: int, height: int, depth: int = 8, colour_type: int = 2,
                    rows: bytes = b"") -> bytes:
    """A PNG whose header claims `width`x`height`; no pixel memory is ever allocated here."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def png_16bit_rgb(width: int = 96, height: int = 96) -> bytes:
    row = b"\x00" + b"\xb4\x00\x5a\x00\x3c\x00" * width
    return png_header_only(width, height, depth=16, colour_type=2, rows=row * height)


def animated_png() -> bytes:
    frames = [photo(), photo(colour=(20, 200, 20))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def transparent_png() -> bytes:
    image = photo(mode="RGBA")
    image.putpixel((5, 5), (0, 0, 0, 0))
    return encode(image, "PNG")


REJECTED = {
    "empty": (lambda: b"", "EMPTY_IMAGE"),
    "random bytes": (lambda: np.random.default_rng(1).bytes(5000), "UNSUPPORTED_FORMAT"),
    "gif": (lambda: encode(photo(), "GIF"), "UNSUPPORTED_FORMAT"),
    "webp claimed as jpeg": (lambda: encode(photo(), "WEBP"), "UNSUPPORTED_FORMAT"),
    "truncated jpeg": (lambda: encode(photo(400, 300))[:3000], "CORRUPT_IMAGE"),
    "jpeg magic then garbage": (lambda: b"\xff\xd8\xff" + b"\x00" * 500, "CORRUPT_IMAGE"),
    "png bomb header": (lambda: png_header_only(60000, 60000), "TOO_MANY_PIXELS"),
    "huge declared png": (lambda: png_header_only(2**20, 2**20), "TOO_MANY_PIXELS"),
    "1x1": (lambda: encode(photo(1, 1), "PNG"), "IMAGE_TOO_SMALL"),
    "100000x10": (lambda: png_header_only(100000, 10), "BAD_ASPECT_RATIO"),
    "tiny 40x40": (lambda: encode(photo(40, 40)), "IMAGE_TOO_SMALL"),
    "animated png": (animated_png, "MULTI_FRAME"),
    "grayscale jpeg": (lambda: encode(photo(mode="L")), "UNSUPPORTED_COLOR"),
    "16-bit grayscale png": (lambda: encode(photo(mode="L").convert("I;16"), "PNG"),
                             "UNSUPPORTED_COLOR"),
    "transparent png": (transparent_png, "TRANSPARENT_IMAGE"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_image_is_invalid_argument_with_reason(fake_server: Running, name: str) -> None:
    make, reason = REJECTED[name]
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=make()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == reason
    assert caught.value.details()  # a readable message


CONVERTED = {
    "cmyk jpeg": lambda: encode(photo(mode="CMYK")),
    "16-bit rgb png": png_16bit_rgb,
    "palette png": lambda: encode(photo().convert("P"), "PNG"),
    "opaque rgba png": lambda: encode(photo(mode="RGBA"), "PNG"),
    "plain png": lambda: encode(photo(), "PNG"),
    "progressive jpeg": lambda: encode(photo(), "JPEG", progressive=True),
}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_image_is_classified(fake_server: Running, fake_backend: FakeBackend,
                                       name: str) -> None:
    response = fake_server.stub.Classify(pb.ClassifyRequest(image=CONVERTED[name]()), timeout=10)
    assert len(response.probabilities) == 7
    assert fake_backend.last_images is not None
    assert fake_backend.last_images.shape == (1, 16, 16, 3)


def test_cmyk_colours_survive_conversion(fake_server: Running, fake_backend: FakeBackend) -> None:
    red = photo(colour=(200, 30, 30), mode="CMYK")
    fake_server.stub.Classify(pb.ClassifyRequest(image=encode(red, quality=95)), timeout=10)
    assert fake_backend.last_images is not None
    r, g, b = fake_backend.last_images[0].reshape(-1, 3).mean(axis=0)
    assert r > 150 and g < 80 and b < 80


def test_exif_orientation_is_applied(fake_server: Running, fake_backend: FakeBackend) -> None:
    # Stored landscape: red left half, blue right half. Orientation 6 says "rotate 90 degrees
    # clockwise to display", so upright the red half is on top.
    stored = np.zeros((100, 200, 3), np.uint8)
    stored[:, :100] = (220, 20, 20)
    stored[:, 100:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    fake_server.stub.Classify(pb.ClassifyRequest(image=data), timeout=10)
    seen = fake_backend.last_images
    assert seen is not None
    top, bottom = seen[0, :4].reshape(-1, 3).mean(axis=0), seen[0, -4:].reshape(-1, 3).mean(0)
    assert top[0] > 150 and top[2] < 80, "red should be on top once upright"
    assert bottom[2] > 150 and bottom[0] < 80


def test_oversized_message_is_refused_before_decoding(fake_backend: FakeBackend) -> None:
    from dermserve.core.image.limits import ImageLimits
    from tests.service.conftest import running_server, server_settings

    settings = server_settings(limits=ImageLimits(max_bytes=50_000))
    with running_server(fake_backend, settings) as running:
        big = np.random.default_rng(2).bytes(40_000)
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Classify(pb.ClassifyRequest(image=b"\xff\xd8\xff" + big), timeout=10)
        assert reason_of(caught.value) == "CORRUPT_IMAGE"  # under the byte limit: decoded
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Classify(pb.ClassifyRequest(image=b"\xff\xd8\xff" + big * 2),
                                  timeout=10)
        assert reason_of(caught.value) == "IMAGE_TOO_LARGE"
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Classify(pb.ClassifyRequest(image=big * 3), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own limit
