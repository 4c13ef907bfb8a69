"""The released model in models/, served over real gRPC by the embedded backend, as `make run`
serves it: its contract, abstention on non-skin inputs, and (where ../shared has the data) the
predictions recorded at publish time.

The other tests use tiny stand-in networks; these are the only ones on the committed weights, so
a broken or swapped release fails `make test` rather than a hospital's first call."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermserve.core.backends.embedded import EmbeddedBackend
from tests.service.conftest import Running, encode, pb, running_server, wait_until

REPO = Path(__file__).resolve().parents[1]
MODEL_BASE = REPO / "models"
MODEL_NAME = "ham10000"
SHARED = REPO.parent / "shared"
HAM10000_IMAGES = SHARED / "data" / "ham10000" / "images"
SANITY_DIR = SHARED / "weights" / "sanity"
LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
LOAD_TIMEOUT_S = 120.0  # seconds; loading and warming MobileNetV2 on two busy CPUs
PROBABILITY_TOLERANCE = 1e-3  # gRPC path vs. the publish-time record (float32 through protobuf)
OOD_RELATIVE_TOLERANCE = 1e-3  # the same, for the Mahalanobis OOD score

pytestmark = pytest.mark.skipif(not (MODEL_BASE / MODEL_NAME).is_dir(),
                                reason="no released model in models/")


def released_version() -> Path:
    versions = sorted((p for p in (MODEL_BASE / MODEL_NAME).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1]


@pytest.fixture(scope="module")
def served() -> Iterator[Running]:
    backend = EmbeddedBackend(MODEL_BASE, MODEL_NAME, poll_interval_s=60.0)
    backend.start(block=False)
    with running_server(backend) as running:
        assert wait_until(lambda: answers(running), LOAD_TIMEOUT_S), "the release never answered"
        yield running


def answers(running: Running) -> bool:
    try:
        running.stub.GetModel(pb.GetModelRequest(), timeout=5)
        return True
    except Exception:
        return False


def classify(running: Running, image: bytes) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = running.stub.Classify(pb.ClassifyRequest(image=image),
                                                          timeout=30)
    return response


def test_the_release_serves_the_seven_labels_at_224_px_or_less(served: Running) -> None:
    version = released_version()
    model = served.stub.GetModel(pb.GetModelRequest(), timeout=10).version
    assert model.model.version == int(version.name)
    assert list(model.labels) == LABELS
    assert 0 < model.input_size.height <= 224 and 0 < model.input_size.width <= 224
    report = json.loads((version / "assets.extra" / "report" / "report.json").read_text())
    recorded = report["test"]["metrics"]["balanced_accuracy"]["value"]
    served_metrics = json.loads(model.metrics_json)
    assert served_metrics["balanced_accuracy"] == pytest.approx(recorded, abs=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_the_release_abstains_on_noise(served: Running, kind: str) -> None:
    # Seeds and sizes the trainer's own sanity check did not use.
    rng = np.random.default_rng(1234)
    if kind == "uniform":
        pixels = rng.integers(0, 256, (450, 600, 3))
    else:
        pixels = np.clip(rng.normal(128, 60, (300, 300, 3)), 0, 255)
    response = classify(served, encode(Image.fromarray(pixels.astype(np.uint8)), "PNG"))
    assert response.abstained
    assert response.abstention_reason == pb.ABSTENTION_REASON_OUT_OF_DISTRIBUTION


@pytest.mark.skipif(not SANITY_DIR.is_dir(), reason="../shared/weights/sanity is not here")
@pytest.mark.parametrize("name", ["cat.bmp", "bird.bmp"])
def test_the_release_abstains_on_non_skin_photos(served: Running, name: str) -> None:
    # The service takes JPEG and PNG only: send the photo as a hospital system would, as JPEG.
    with Image.open(SANITY_DIR / name) as photo:
        jpeg = encode(photo.convert("RGB"), "JPEG", quality=90)
    response = classify(served, jpeg)
    assert response.abstained
    assert response.abstention_reason != pb.ABSTENTION_REASON_UNSPECIFIED


@pytest.mark.skipif(not HAM10000_IMAGES.is_dir(), reason="../shared HAM10000 images are not here")
def test_the_service_reproduces_the_predictions_recorded_at_publish(served: Running) -> None:
    record = json.loads((released_version() / "assets.extra" / "sample_predictions.json")
                        .read_text())
    assert len(record["image_ids"]) >= 8
    for image_id, expected, ood_score in zip(record["image_ids"], record["probabilities"],
                                             record["ood_scores"], strict=True):
        response = classify(served, (HAM10000_IMAGES / f"{image_id}.jpg").read_bytes())
        got = {p.label: p.probability for p in response.probabilities}
        assert [got[label] for label in LABELS] == pytest.approx(expected,
                                                                 abs=PROBABILITY_TOLERANCE)
        assert response.ood_score == pytest.approx(ood_score, rel=OOD_RELATIVE_TOLERANCE)


def test_a_ham10000_sized_photo_is_answered_not_rejected(served: Running) -> None:
    rng = np.random.default_rng(7)
    skin = np.clip(rng.normal((190, 140, 120), 8, (150, 200, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(skin).save(buffer, "JPEG", quality=90)
    response = classify(served, buffer.getvalue())
    assert len(response.probabilities) == 7
    assert sum(p.probability for p in response.probabilities) == pytest.approx(1.0, abs=1e-4)


OCCLUSION_IMAGES = 6  # HAM10000 images of the publish-time sample: enough for a majority
OCCLUSION_CELLS = 2  # heatmap cells per side of the occluded square (1/3 of a 6x6 map's side)


def occluded(image: Image.Image, row: int, col: int, cells: tuple[int, int]) -> bytes:
    """`image` with the square of OCCLUSION_CELLS heatmap cells around cell (row, col) painted
    its mean colour. Preprocessing resizes the whole frame, so a cell is a fixed fraction of it."""
    pixels = np.asarray(image.convert("RGB")).copy()
    height, width = pixels.shape[:2]
    top = min(max(row - OCCLUSION_CELLS // 2, 0), cells[0] - OCCLUSION_CELLS)
    left = min(max(col - OCCLUSION_CELLS // 2, 0), cells[1] - OCCLUSION_CELLS)
    rows = slice(top * height // cells[0], (top + OCCLUSION_CELLS) * height // cells[0])
    cols = slice(left * width // cells[1], (left + OCCLUSION_CELLS) * width // cells[1])
    pixels[rows, cols] = pixels.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def probability_of(response: pb.ClassifyResponse, label: str) -> float:
    return next(p.probability for p in response.probabilities if p.label == label)


@pytest.mark.skipif(not HAM10000_IMAGES.is_dir(), reason="../shared HAM10000 images are not here")
def test_occluding_the_hottest_region_costs_the_class_more_than_the_coldest(
        served: Running) -> None:
    record = json.loads((released_version() / "assets.extra" / "sample_predictions.json")
                        .read_text())
    hot_drops, cold_drops = [], []
    for image_id in record["image_ids"][:OCCLUSION_IMAGES]:
        data = (HAM10000_IMAGES / f"{image_id}.jpg").read_bytes()
        explained = served.stub.Explain(pb.ExplainRequest(image=data), timeout=60)
        label = explained.explained_label
        heatmap = np.asarray(explained.heatmap.values).reshape(explained.heatmap.height,
                                                               explained.heatmap.width)
        base = probability_of(explained.classification, label)
        with Image.open(io.BytesIO(data)) as image:
            hot = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
            cold = np.unravel_index(int(np.argmin(heatmap)), heatmap.shape)
            hot_image = occluded(image, int(hot[0]), int(hot[1]), heatmap.shape)
            cold_image = occluded(image, int(cold[0]), int(cold[1]), heatmap.shape)
        hot_drops.append(base - probability_of(classify(served, hot_image), label))
        cold_drops.append(base - probability_of(classify(served, cold_image), label))
    wins = sum(h > c for h, c in zip(hot_drops, cold_drops, strict=True))
    assert wins > OCCLUSION_IMAGES // 2, (hot_drops, cold_drops)
    assert np.mean(hot_drops) > np.mean(cold_drops), (hot_drops, cold_drops)
