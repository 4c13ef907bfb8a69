"""No input may crash or wedge the server: corrupted JPEGs and PNGs (seeded, so reproducible)
get a result or INVALID_ARGUMENT, never INTERNAL, and the server keeps answering."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.service.conftest import Running, encode, good_jpeg, pb, photo

MUTANTS_PER_FORMAT = 60  # enough to hit headers, EXIF, tables and scan data; ~1 s in all


def mutants(data: bytes, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(MUTANTS_PER_FORMAT):
        mutable = bytearray(data)
        if index % 3 == 0:  # flip bytes near the start, where the headers are
            for pos in rng.integers(2, min(len(data), 600), 4):
                mutable[pos] = int(rng.integers(0, 256))
        elif index % 3 == 1:  # flip bytes anywhere
            for pos in rng.integers(2, len(data), 8):
                mutable[pos] = int(rng.integers(0, 256))
        else:  # cut it short
            mutable = mutable[: int(rng.integers(8, len(data)))]
        out.append(bytes(mutable))
    return out


def exif_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 3
    exif[0x010F] = "camera"
    return encode(photo(), "JPEG", exif=exif.tobytes())


@pytest.mark.filterwarnings("ignore:Tag data larger than file")  # Pillow on broken EXIF
@pytest.mark.parametrize("name, make", [
    ("jpeg", good_jpeg), ("jpeg with exif", exif_jpeg),
    ("png", lambda: encode(photo(), "PNG")),
    ("palette png", lambda: encode(photo().convert("P"), "PNG")),
])
def test_corrupted_images_never_cause_internal_errors(fake_server: Running, name: str,
                                                      make: object) -> None:
    assert callable(make)
    codes = []
    for data in mutants(make(), seed=len(name)):
        try:
            fake_server.stub.Classify(pb.ClassifyRequest(image=data), timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert grpc.StatusCode.INVALID_ARGUMENT in codes  # the mutants did break something
    assert fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5).top_label
