"""Decoding costs what the budget says and no more, on the real server and the classifier core:
40-megapixel CMYK and EXIF-rotated JPEGs decode at reduced scale with every copy counted; images
that cannot be reduced (PNG) hold a share that covers their real peak memory; progressive JPEGs
with thousands of scans are refused before decoding; a decode stops once its deadline passes."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from dermserve.core.backends.base import ModelRef
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.classifier import Classifier
from dermserve.core.defaults import DEFAULT_DECODE_PIXEL_BUDGET, DEFAULT_MAX_JPEG_SCANS
from dermserve.core.errors import BackendTimeout, InvalidImage
from dermserve.core.image.decoding import PixelBudget, decode_image, decode_rgb
from dermserve.core.image.limits import ImageLimits
from dermserve.core.image.opening import open_image
from dermserve.core.preprocessing import detail_size, to_model_input
from tests.conftest import TINY_INPUT, TINY_MODEL_NAME
from tests.hostile_images import (
    EXIF_ORIENTATION,
    LARGE_SIZE,
    ROTATE_90_CLOCKWISE,
    large_cmyk_jpeg,
    large_opaque_rgba_png,
    large_rotated_jpeg,
    many_scan_jpeg,
    peak_memory,
    scan_count,
)
from tests.service.conftest import (
    FakeBackend,
    Running,
    encode,
    pb,
    photo,
    reason_of,
    running_server,
)

MB = 1024 * 1024
EIGHTH_SCALE_PIXELS = math.ceil(LARGE_SIZE[0] / 8) * math.ceil(LARGE_SIZE[1] / 8)
"""A 40-megapixel JPEG decoded at 1/8 scale (libjpeg rounds up)."""
MEMORY_SLACK_BYTES = 16 * MB  # allocator and interpreter noise around one decode


@pytest.fixture(scope="module")
def large_jpegs() -> dict[str, bytes]:
    return {"cmyk": large_cmyk_jpeg(), "exif-rotated": large_rotated_jpeg()}


def budgeted_classifier(backend: FakeBackend | None = None) -> tuple[Classifier, PixelBudget]:
    budget = PixelBudget(DEFAULT_DECODE_PIXEL_BUDGET)
    return Classifier(backend or FakeBackend(), "ham10000", ImageLimits(),
                      decode_budget=budget), budget


def test_eight_concurrent_large_jpegs_add_little_memory_to_a_real_server(
        large_jpegs: dict[str, bytes]) -> None:
    # The attack: these eight added about 2.2 GB to the front, for a budget of 640 MB.
    images = sorted(large_jpegs.values()) * 4
    with running_server(FakeBackend()) as running, peak_memory() as memory:
        with ThreadPoolExecutor(len(images)) as pool:
            responses = list(pool.map(lambda data: running.stub.Classify(
                pb.ClassifyRequest(image=data), timeout=60), images))
    assert all(len(response.probabilities) == 7 for response in responses)
    # gRPC's copies of eight 2 MB messages are about 120 MB of it; full-size decodes added 2 GB.
    assert memory.growth_bytes < 256 * MB, f"peak grew by {memory.growth_bytes / MB:.0f} MB"


@pytest.mark.parametrize("name", ["cmyk", "exif-rotated"])
def test_a_large_jpeg_holds_its_reduced_decode_and_one_copy(large_jpegs: dict[str, bytes],
                                                            name: str) -> None:
    classifier, budget = budgeted_classifier()
    classifier.classify(large_jpegs[name])
    assert budget.peak == 2 * EIGHTH_SCALE_PIXELS  # the decode at 1/8 scale and its copy
    assert budget.in_use == 0


def test_the_share_covers_the_real_peak_memory_of_every_copy(
        large_jpegs: dict[str, bytes]) -> None:
    # A PNG cannot decode at reduced scale: its RGBA pixels and their RGB copy are both alive
    # at once. The budget's share (4 bytes a pixel) must cover what the process really used.
    images = {**large_jpegs, "opaque rgba png": large_opaque_rgba_png((5000, 4000))}
    for name, data in images.items():
        classifier, budget = budgeted_classifier()
        with peak_memory() as memory:
            classifier.classify(data)
        assert memory.growth_bytes <= budget.peak * 4 + MEMORY_SLACK_BYTES, (
            f"{name}: peak grew by {memory.growth_bytes / MB:.0f} MB, the budget counted "
            f"{budget.peak * 4 / MB:.0f} MB")
    assert budget.peak == 2 * 5000 * 4000  # the PNG: decoded pixels and their converted copy


def test_a_large_rotated_jpeg_is_upright_after_reduced_decoding(fake_backend: FakeBackend) -> None:
    # Stored landscape: red left half, blue right half; upright, red is on top.
    stored = Image.new("RGB", (4000, 2000), (220, 20, 20))
    stored.paste((20, 20, 220), (2000, 0, 4000, 2000))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CLOCKWISE
    classifier, budget = budgeted_classifier(fake_backend)
    classifier.classify(encode(stored, exif=exif.tobytes(), quality=95))
    assert budget.peak < 4000 * 2000 / 4  # decoded at reduced scale
    seen = fake_backend.last_images
    assert seen is not None
    top, bottom = seen[0, :4].reshape(-1, 3).mean(0), seen[0, -4:].reshape(-1, 3).mean(0)
    assert top[0] > 150 and top[2] < 80 and bottom[2] > 150 and bottom[0] < 80


def textured_jpeg(width: int, height: int) -> bytes:
    """Lesion-like content: smooth colour regions with fine grain on top."""
    rng = np.random.default_rng(7)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-12, 13, smooth.shape)
    return encode(Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)), quality=90)


def test_reduced_scale_decoding_predicts_as_full_decoding(model_base: object) -> None:
    data = textured_jpeg(2400, 1800)
    limits = ImageLimits()
    reduced_image = decode_image(data, limits, detail_size((2400, 1800), TINY_INPUT))
    assert reduced_image.size == (300, 225)  # libjpeg decoded it at 1/8 scale
    full = to_model_input(decode_image(data, limits), TINY_INPUT)
    reduced = to_model_input(reduced_image, TINY_INPUT)
    assert np.abs(full.astype(np.int16) - reduced).mean() < 2.0  # intensity levels of 255
    backend = EmbeddedBackend(model_base, TINY_MODEL_NAME, settle_s=0.05)  # type: ignore[arg-type]
    backend.start()
    try:
        pinned = ModelRef(TINY_MODEL_NAME, version=2)
        config = backend.resolve(pinned).config
        assert config is not None
        expected = backend.predict(pinned, full[None]).probabilities[0]
        prediction = Classifier(backend, TINY_MODEL_NAME, limits).classify(data, pinned)
    finally:
        backend.close()
    answered = {item.label: item.probability for item in prediction.probabilities}
    np.testing.assert_allclose([answered[label] for label in config.labels], expected,
                               atol=0.01)


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding(
        fake_server: Running) -> None:
    bomb = many_scan_jpeg(encode(photo(), progressive=True), 3000)
    assert scan_count(bomb) > 3000
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=bomb), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "TOO_MANY_SCANS"


def test_the_scan_limit_admits_ordinary_progressive_jpegs_up_to_the_limit() -> None:
    base = encode(photo(), progressive=True)
    assert 1 < scan_count(base) < 20
    at_limit = many_scan_jpeg(base, DEFAULT_MAX_JPEG_SCANS - scan_count(base))
    assert decode_image(at_limit, ImageLimits()).size == (200, 150)
    with pytest.raises(InvalidImage) as caught:
        decode_image(at_limit, ImageLimits(max_jpeg_scans=DEFAULT_MAX_JPEG_SCANS - 1))
    assert caught.value.reason == "TOO_MANY_SCANS"


class ExpiringDeadline:
    """A deadline check that passes until `expired` is set, then counts its calls and raises."""

    def __init__(self) -> None:
        self.expired = False
        self.checks_after_expiry = 0

    def __call__(self) -> None:
        if self.expired:
            self.checks_after_expiry += 1
            raise BackendTimeout("the deadline passed")


def test_a_decode_stops_at_the_next_block_of_input_once_the_deadline_passed() -> None:
    grainy = Image.fromarray(np.random.default_rng(3).integers(0, 256, (900, 1200, 3), np.uint8))
    data = many_scan_jpeg(encode(grainy, progressive=True, quality=95), 40)
    assert len(data) > 4 * 65536  # Pillow feeds the decoder 64 KiB at a time
    deadline = ExpiringDeadline()
    image = open_image(data, ImageLimits(), deadline)
    deadline.expired = True
    with pytest.raises(BackendTimeout):
        decode_rgb(image, deadline)
    assert deadline.checks_after_expiry == 1  # it stopped at the first block it asked for
