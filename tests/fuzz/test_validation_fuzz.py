"""Fuzzing the two places where untrusted input first meets dermserve: image validation
(`core.image.decoding.decode_image`, shared by Classify and the batch worker) and batch references
(`batch.references`: reference paths, manifest text). Hypothesis feeds random bytes, mutated real
JPEGs, PNGs and DICOM files, and random text; the only acceptable outcomes are a valid result or
an error of dermserve's own tree that maps to a client status (never InternalError, never
anything else).

`make test` runs a short, derandomized run (FUZZ_EXAMPLES, default 200 per target: the same
examples every time); `make fuzz` a long random one (FUZZ_EXAMPLES=20000 FUZZ_RANDOM=1).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermserve.batch.references import InputRoots, manifest_paths
from dermserve.core.errors import DermserveError, InternalError
from dermserve.core.image.decoding import decode_image
from dermserve.core.image.limits import ImageLimits
from devtools.dicom_sample import VARIANTS, photograph_dataset, to_bytes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
LIMITS = ImageLimits(max_bytes=256 * 1024, max_pixels=1_000_000, min_side=16,
                     max_aspect_ratio=4.0)
"""Small bounds: a fuzzed header may declare any size, and the fuzzer must stay fast."""


def seed_image(fmt: str, mode: str, size: tuple[int, int], **params: object) -> bytes:
    rng = np.random.default_rng(len(fmt) + size[0])
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, fmt, **params)
    return buffer.getvalue()


SEEDS = (
    seed_image("JPEG", "RGB", (64, 48)),
    seed_image("JPEG", "RGB", (64, 48), progressive=True),
    seed_image("JPEG", "CMYK", (40, 40)),
    seed_image("JPEG", "L", (32, 32)),
    seed_image("PNG", "RGB", (48, 32)),
    seed_image("PNG", "RGBA", (32, 32)),
    seed_image("PNG", "P", (32, 32)),
)


def _mutate(seed: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[: max(1, cut % (len(data) + 1))]) if cut else bytes(data)


mutated_images = st.builds(
    _mutate, st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    st.integers(0, 1 << 16))
random_images = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b),
    st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))


DICOM_SEEDS = tuple(
    to_bytes(photograph_dataset(Image.fromarray(
        np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)), variant))
    for variant in sorted(VARIANTS))
mutated_dicom = st.builds(
    _mutate, st.sampled_from(DICOM_SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    st.integers(0, 1 << 16))
random_dicom = st.binary(max_size=1024).map(lambda b: bytes(128) + b"DICM" + b)


def assert_validated(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
    except InternalError:
        raise
    except DermserveError as exc:
        assert exc.status != "INTERNAL", exc
        return
    assert image.mode == "RGB"
    width, height = image.size
    assert width * height <= LIMITS.max_pixels and min(width, height) >= LIMITS.min_side


@FUZZ
@given(mutated_images)
def test_mutated_images_are_valid_or_refused(data: bytes) -> None:
    assert_validated(data)


@FUZZ
@given(random_images)
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    assert_validated(data)


@FUZZ
@given(st.one_of(mutated_dicom, random_dicom))
def test_mutated_dicom_files_are_valid_or_refused(data: bytes) -> None:
    assert_validated(data)


def test_the_dicom_seeds_decode() -> None:
    assert all(decode_image(seed, LIMITS).size == (64, 48) for seed in DICOM_SEEDS)


def test_the_seeds_themselves_pass_or_fail_as_documented() -> None:
    """Guards the fuzzer: unmutated seeds reach both outcomes (decoded and refused)."""
    outcomes = set()
    for seed in SEEDS:
        try:
            decode_image(seed, LIMITS)
            outcomes.add("ok")
        except DermserveError as exc:
            outcomes.add(exc.reason)
    assert "ok" in outcomes and "UNSUPPORTED_COLOR" in outcomes


# --- references ----------------------------------------------------------------------------------
reference_texts = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(st.sampled_from(["..", ".", "a", "img.jpg", "", "~", "\x00", "\ufeff", "/"]),
             max_size=12).map("/".join),
)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> InputRoots:
    root = tmp_path_factory.mktemp("root")
    (root / "a").mkdir()
    (root / "a" / "img.jpg").write_bytes(SEEDS[0])
    (root / "out").symlink_to("/etc")
    return InputRoots([root])


@FUZZ
@given(text=reference_texts)
@example(text="a/" * 2500)  # 5,000 characters
@example(text="../" * 40 + "etc/passwd")
@example(text="out/passwd")  # a symlink leading out of the root
def test_references_resolve_inside_the_roots_or_are_refused(roots: InputRoots,
                                                            text: str) -> None:
    try:
        path = roots.resolve(text)
    except InternalError:
        raise
    except DermserveError as exc:
        assert exc.status == "INVALID_ARGUMENT", exc
        return
    assert roots.contains(Path(path))


@FUZZ
@given(text=st.text(max_size=2000))
@example(text="\r0")  # a lone carriage return: csv.Error, once an INTERNAL
@example(text='path\n"' + "a" * (200 * 1024))  # a field over csv's 128 KiB limit
def test_manifest_text_gives_paths_or_a_clean_refusal(text: str) -> None:
    try:
        paths = manifest_paths(text)
    except InternalError:
        raise
    except DermserveError as exc:
        assert exc.status == "INVALID_ARGUMENT", exc
        return
    assert paths and all(p.strip() == p and p for p in paths)
