"""Hostile files that are cheap to make and were expensive to refuse (issue 26): DICOM structure
bombs, polyglots, junk before a JPEG's first marker, and pydicom's messages about the values of a
file. Each is refused with a stable reason, in the core and over the real server, at a cost
counted in work (elements scanned, deadline checks, memory allocated), not in wall-clock time."""

from __future__ import annotations

import logging
import tracemalloc
import warnings

import grpc
import pytest

from dermserve.core.classifier import Classifier
from dermserve.core.errors import InvalidImage, ResourceExhausted
from dermserve.core.image.decoding import PixelBudget, decode_image
from dermserve.core.image.dicom_scan import DEADLINE_EVERY, check_structure
from dermserve.core.image.jpeg_scan import junk_before_scan
from dermserve.core.image.limits import ImageLimits
from dermserve.core.image.opening import DEADLINE_CHECK_BYTES
from devtools.dicom_sample import to_bytes
from tests.dicom_files import (
    PLANTED,
    bundled,
    bundled_as_photograph,
    dicom_dataset,
    ham_dicom,
    ham_image,
)
from tests.hostile_images import (
    encode,
    jpeg_junk_prefix,
    jpeg_polyglot,
    png_polyglot,
    with_element_bomb,
    with_item_bomb,
)
from tests.service.conftest import FakeBackend, Running, pb, reason_of

LIMITS = ImageLimits()
BOMBS = {"items": with_item_bomb, "elements": with_element_bomb}


class CountingDeadline:
    """A deadline that never passes and counts how often it was asked."""

    def __init__(self) -> None:
        self.checks = 0

    def __call__(self) -> None:
        self.checks += 1


def refusal(data: bytes, check: CountingDeadline | None = None) -> str:
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, LIMITS, check_deadline=check)
    return caught.value.reason


def classify_refusal(running: Running, data: bytes) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.Classify(pb.ClassifyRequest(image=data), timeout=30)
    return caught.value.code(), reason_of(caught.value)  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=sorted(BOMBS))
def bomb(request: pytest.FixtureRequest) -> bytes:
    """A valid photograph DICOM filled to the byte limit with ~1.3 million empty items in one
    sequence, or as many empty private elements, after its pixel data."""
    data = BOMBS[request.param](ham_dicom(), LIMITS.max_bytes)
    assert len(data) <= LIMITS.max_bytes
    assert check_structure(data, 10**7, 16) > 1_000_000  # what pydicom would have built
    return data


def test_a_dicom_structure_bomb_is_refused_after_the_element_limit(bomb: bytes) -> None:
    """Refused once the count passes the limit: the deadline is checked as the scan goes (a few
    times, not a million), and the refusal allocates almost nothing (pydicom's parse of the
    same file allocated about 0.9 GB)."""
    check = CountingDeadline()
    tracemalloc.start()
    try:
        assert refusal(bomb, check) == "DICOM_TOO_COMPLEX"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 1 <= check.checks <= LIMITS.max_dicom_elements // DEADLINE_EVERY + 1
    assert peak < 1024 * 1024  # bytes


def test_a_dicom_structure_bomb_is_invalid_argument_over_the_real_server(
        fake_server: Running, bomb: bytes) -> None:
    assert classify_refusal(fake_server, bomb) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "DICOM_TOO_COMPLEX")
    assert fake_server.stub.Classify(pb.ClassifyRequest(image=ham_dicom()), timeout=30).dicom


def test_a_dicom_file_is_parsed_within_the_decode_budget() -> None:
    """Parsing is work the budget counts (pydicom's objects, uncompressed pixels converted while
    the file opens): with the budget taken, a DICOM file waits for its share instead of being
    parsed, and ends DECODE_BUSY at its deadline; once the budget is free, the same file is
    parsed and refused for what it is."""
    budget = PixelBudget(1000)
    classifier = Classifier(FakeBackend(), "ham10000", LIMITS, decode_budget=budget)
    ct = bundled("CT_small.dcm")
    with budget.hold(budget.max_pixels, None):
        with pytest.raises(ResourceExhausted) as busy:
            classifier.classify(ct, timeout=0.2)
    assert busy.value.reason == "DECODE_BUSY"
    with pytest.raises(InvalidImage) as refused:
        classifier.classify(ct, timeout=10)
    assert refused.value.reason == "UNSUPPORTED_SOP_CLASS" and budget.in_use == 0


def test_the_element_limit_admits_ordinary_files_and_is_a_setting() -> None:
    data = ham_dicom()
    counted = check_structure(data, LIMITS.max_dicom_elements, LIMITS.max_dicom_depth)
    assert decode_image(data, ImageLimits(max_dicom_elements=counted)).mode == "RGB"
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, ImageLimits(max_dicom_elements=counted - 1))
    assert caught.value.reason == "DICOM_TOO_COMPLEX"


@pytest.mark.parametrize("hide", [png_polyglot, jpeg_polyglot])
def test_a_jpeg_or_png_that_hides_a_dicom_file_is_ambiguous(fake_server: Running,
                                                            hide: object) -> None:
    """The page shows the PNG's picture while the DICOM's answer came back: neither is taken."""
    image_format = "PNG" if hide is png_polyglot else "JPEG"
    polyglot = hide(encode(ham_image(), image_format), ham_dicom("jpeg-ybr422"))  # type: ignore[operator]
    assert refusal(polyglot) == "AMBIGUOUS_FORMAT"
    assert classify_refusal(fake_server, polyglot) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "AMBIGUOUS_FORMAT")


@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x41])
def test_junk_before_a_jpeg_marker_is_refused_without_a_read_per_byte(
        fake_server: Running, fill: int) -> None:
    """`FF D8 FF` and 10 MiB of junk: Pillow skipped it a byte at a time, with a deadline check
    per byte (4 million of them, 5 s of CPU). Now it is counted in the bytes and refused before
    Pillow reads any; a header within the bound costs a check per block of input, not per
    byte."""
    junk = jpeg_junk_prefix(LIMITS.max_bytes - 3, fill)
    check = CountingDeadline()
    assert refusal(junk, check) == "CORRUPT_IMAGE"
    assert check.checks == 0 and junk_before_scan(junk, LIMITS.max_jpeg_junk_bytes) == \
        LIMITS.max_jpeg_junk_bytes + 1
    within = jpeg_junk_prefix(LIMITS.max_jpeg_junk_bytes - 1, fill)
    assert refusal(within, check) == "CORRUPT_IMAGE"
    assert check.checks <= len(within) // DEADLINE_CHECK_BYTES + 2
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=junk), timeout=30)
    assert reason_of(caught.value) == "CORRUPT_IMAGE"
    assert "junk" in caught.value.details()  # type: ignore[attr-defined]


def test_pydicom_says_nothing_of_the_files_values(fake_server: Running,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Invalid values (a planted one among them) and an encoding that differs from the one the
    header declares made pydicom log the values and print raw `warnings` lines: now no warning,
    no log record and no error message carries a value from the file."""
    caplog.set_level(logging.DEBUG)
    planted = PLANTED[1]
    ds = dicom_dataset(ham_image())
    ds.Modality = f"{planted}_{planted}"  # too long for CS, and not a modality we take
    bad_modality = to_bytes(ds)
    ds = dicom_dataset(ham_image())
    ds.StudyInstanceUID = f"1.2.3.{planted}"
    bad_uid = to_bytes(ds)
    with warnings.catch_warnings(record=True) as caught:  # a fresh registry: every warning
        fake_server.stub.Classify(pb.ClassifyRequest(image=bundled_as_photograph(
            "SC_rgb_jpeg.dcm")), timeout=30)  # implicit VR under an explicit VR header
        answers = [classify_refusal(fake_server, data) for data in (bad_modality, bad_uid)]
        details = [str(error) for error in caught]
    assert [reason for _, reason in answers] == ["UNSUPPORTED_MODALITY", "INVALID_UID"]
    assert details == []
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert planted not in text and "Invalid value" not in text
    for data in (bad_modality, bad_uid):
        with pytest.raises(grpc.RpcError) as error:
            fake_server.stub.Classify(pb.ClassifyRequest(image=data), timeout=30)
        assert planted not in error.value.details()  # type: ignore[attr-defined]


def test_a_long_version_label_is_invalid_argument_and_not_echoed(fake_server: Running) -> None:
    """Issue 26 defect 8: the label went back in a NOT_FOUND's details; at 60,000 characters
    that overflowed gRPC's metadata and the client saw RESOURCE_EXHAUSTED."""
    long = "s" * 60_000
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(
            image=encode(ham_image(), "JPEG"), model=pb.ModelSelector(version_label=long)),
            timeout=30)
    assert (caught.value.code(), reason_of(caught.value)) == (  # type: ignore[attr-defined]
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERSION")
    assert long[:40] not in caught.value.details()  # type: ignore[attr-defined]
