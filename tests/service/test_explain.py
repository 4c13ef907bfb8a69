"""Explain over the real server, the embedded backend and real SavedModels: the heatmap follows
the class evidence in the image, the asked label is the one explained, and the RPC has Classify's
validation, reasons, auth and metrics. Version 1 is exported without the `explain` signature (as
the released version 1 was), version 2 is the hand-built region network (tests/explain_models)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.batching import MicroBatcher
from dermserve.core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.service.settings import SecuritySettings
from devtools.dicom_sample import photograph_dataset, to_bytes
from tests.conftest import TINY_INPUT, TINY_MODEL_NAME, tiny_config
from tests.explain_models import (
    GREEN,
    RED,
    export_region_version,
    hottest_quadrant,
    patched_png,
)
from tests.service.conftest import Running, pb, reason_of, running_server, server_settings

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


@pytest.fixture(scope="module")
def explain_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dermserve.trainer.export import export_tiny_version

    base = tmp_path_factory.mktemp("explain-models")
    export_tiny_version(base / TINY_MODEL_NAME / "1", tiny_config(1), seed=1, explain=False)
    export_region_version(base, 2)
    return base


@pytest.fixture(scope="module")
def backend(explain_base: Path) -> Iterator[MicroBatcher]:
    embedded = EmbeddedBackend(explain_base, TINY_MODEL_NAME, poll_interval_s=0.2)
    embedded.start()
    batcher = MicroBatcher(embedded)
    yield batcher
    batcher.close()


@pytest.fixture
def server(backend: MicroBatcher) -> Iterator[Running]:
    with running_server(backend) as running:
        yield running


def explain(running: Running, image: bytes, label: str = "", version: int = 0,
            metadata: tuple[tuple[str, str], ...] | None = None) -> pb.ExplainResponse:
    selector = pb.ModelSelector(version=version) if version else None
    response: pb.ExplainResponse = running.stub.Explain(
        pb.ExplainRequest(image=image, label=label, model=selector), metadata=metadata,
        timeout=10)
    return response


def heatmap_of(response: pb.ExplainResponse) -> np.ndarray:
    heatmap = response.heatmap
    return np.asarray(heatmap.values, np.float32).reshape(heatmap.height, heatmap.width)


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_the_heatmap_is_hot_where_the_evidence_is(server: Running, quadrant: str) -> None:
    response = explain(server, patched_png((RED, quadrant)))
    heatmap = heatmap_of(response)
    assert response.explained_label == response.classification.top_label == "mel"
    assert hottest_quadrant(heatmap) == quadrant
    assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0.0
    # Evidence fills one quadrant: the others hold almost no heat (only where preprocessing's
    # antialiased resize blurs the patch's edge across the border).
    half_h, half_w = heatmap.shape[0] // 2, heatmap.shape[1] // 2
    total = float(heatmap.sum())
    assert total > 0
    quadrant_sums = [float(heatmap[r:r + half_h, c:c + half_w].sum())
                     for r in (0, half_h) for c in (0, half_w)]
    assert max(quadrant_sums) > 0.95 * total


def test_the_asked_label_is_explained(server: Running) -> None:
    image = patched_png((RED, "top-left"), (GREEN, "bottom-right"))
    melanoma = explain(server, image, label="mel")
    naevus = explain(server, image, label="nv")
    assert (melanoma.explained_label, naevus.explained_label) == ("mel", "nv")
    assert hottest_quadrant(heatmap_of(melanoma)) == "top-left"
    assert hottest_quadrant(heatmap_of(naevus)) == "bottom-right"


def test_the_classification_is_classifys(server: Running) -> None:
    image = patched_png((GREEN, "top-right"))
    explained = explain(server, image)
    classified = server.stub.Classify(pb.ClassifyRequest(image=image), timeout=10)
    assert explained.classification.model.version == classified.model.version == 2
    assert explained.classification.top_label == classified.top_label == "nv"
    assert [p.label for p in explained.classification.probabilities] == \
        [p.label for p in classified.probabilities]
    assert [p.probability for p in explained.classification.probabilities] == \
        pytest.approx([p.probability for p in classified.probabilities], abs=1e-6)
    assert explained.classification.request_id  # generated, as Classify does


def test_the_overlay_is_the_model_input_with_the_heat_on_it(server: Running) -> None:
    response = explain(server, patched_png((RED, "bottom-left")))
    overlay = np.asarray(Image.open(io.BytesIO(response.overlay_png)).convert("RGB"), np.int16)
    assert overlay.shape == (TINY_INPUT.height, TINY_INPUT.width, 3)
    half, margin = TINY_INPUT.height // 2, 4  # pixels the upsampled map's edge may blur over
    # The far (top-right) quadrant is the grey image untouched; the hot one is tinted.
    assert np.abs(overlay[:half - margin, half + margin:] - 128).max() <= 1
    assert np.abs(overlay[half:, :half] - np.array([255, 0, 0])).max() > 10


def test_an_unknown_label_is_invalid(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        explain(server, patched_png((RED, "top-left")), label="melanoma")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "UNKNOWN_LABEL"


def test_a_version_without_the_signature_is_a_failed_precondition(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        explain(server, patched_png((RED, "top-left")), version=1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(caught.value) == "EXPLANATION_UNSUPPORTED"
    # That version still classifies.
    classified = server.stub.Classify(pb.ClassifyRequest(
        image=patched_png((RED, "top-left")), model=pb.ModelSelector(version=1)), timeout=10)
    assert classified.model.version == 1


@pytest.mark.parametrize("image", [b"this is a text file, not an image\n" * 4, b""])
def test_validation_is_classifys(server: Running, image: bytes) -> None:
    with pytest.raises(grpc.RpcError) as explained:
        explain(server, image)
    with pytest.raises(grpc.RpcError) as classified:
        server.stub.Classify(pb.ClassifyRequest(image=image), timeout=10)
    assert explained.value.code() == classified.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(explained.value) == reason_of(classified.value)


def test_a_bad_request_id_is_refused(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Explain(pb.ExplainRequest(image=patched_png((RED, "top-left")),
                                              request_id="x" * 500), timeout=10)
    assert reason_of(caught.value) == "INVALID_REQUEST_ID"


def test_explain_calls_are_counted(server: Running) -> None:
    explain(server, patched_png((RED, "top-left")))
    with pytest.raises(grpc.RpcError):
        explain(server, patched_png((RED, "top-left")), label="melanoma")
    samples = server.metrics.registry.get_sample_value
    assert samples("dermserve_requests_total", {"method": "Explain", "code": "OK"}) == 1.0
    assert samples("dermserve_requests_total",
                   {"method": "Explain", "code": "INVALID_ARGUMENT"}) == 1.0


def test_explain_needs_a_token_like_classify(backend: MicroBatcher, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("explain-tok dermserve.v1.LesionClassifier\n"
                      "batch-tok dermserve.v1.BatchJobs\n")
    settings = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    image = patched_png((RED, "top-left"))
    with running_server(backend, settings) as running:
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                            ("batch-tok", grpc.StatusCode.PERMISSION_DENIED)):
            metadata = (("authorization", f"Bearer {token}"),) if token else None
            with pytest.raises(grpc.RpcError) as caught:
                explain(running, image, metadata=metadata)
            assert caught.value.code() == code
        granted = explain(running, image, metadata=(("authorization", "Bearer explain-tok"),))
        assert granted.explained_label == "mel"


def test_the_cli_writes_the_overlay_and_prints_the_probabilities(
        server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dermserve.cli.main import main

    image, overlay = tmp_path / "lesion.png", tmp_path / "overlay.png"
    image.write_bytes(patched_png((RED, "top-left"), (GREEN, "bottom-right")))
    status = main(["explain", str(image), "--label", "nv", "--output", str(overlay),
                   "--target", f"127.0.0.1:{server.port}"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Melanoma" in out and "Melanocytic nevus" in out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("    ")]
    assert sorted(rows) == sorted(HAM10000_DISPLAY_NAMES)  # one probability row per class
    assert "Result: Melanoma (mel)" in out
    assert "explained nv: heatmap 8x8" in out
    with Image.open(overlay) as written:
        assert (written.format, written.size) == ("PNG", (TINY_INPUT.width, TINY_INPUT.height))


def test_the_cli_reports_an_unknown_label(server: Running, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dermserve.cli.main import main

    image = tmp_path / "lesion.png"
    image.write_bytes(patched_png((RED, "top-left")))
    status = main(["explain", str(image), "--label", "melanoma", "--json",
                   "--target", f"127.0.0.1:{server.port}"])
    assert status == 1
    assert "INVALID_ARGUMENT UNKNOWN_LABEL" in capsys.readouterr().err


def test_a_dicom_image_is_explained_with_its_uids(server: Running) -> None:
    """DICOM goes through Explain's open and decode as through Classify's: the same map as the
    photograph it wraps (uncompressed RGB loses nothing), and the study's UIDs travel along."""
    png = patched_png((RED, "bottom-left"))
    dataset = photograph_dataset(Image.open(io.BytesIO(png)).convert("RGB"), "uncompressed-rgb")
    from_dicom = explain(server, to_bytes(dataset))
    from_png = explain(server, png)
    assert from_dicom.classification.dicom.sop_instance_uid == dataset.SOPInstanceUID
    assert from_dicom.classification.dicom.study_instance_uid == dataset.StudyInstanceUID
    assert not from_png.classification.HasField("dicom")
    assert hottest_quadrant(heatmap_of(from_dicom)) == "bottom-left"
    np.testing.assert_allclose(heatmap_of(from_dicom), heatmap_of(from_png), atol=1e-5)


def test_a_long_label_is_refused_without_being_echoed(server: Running) -> None:
    """Issue 26 defect 8: a client's text of any length went back in the error's details (and
    the log line); past gRPC's metadata limit the client got RESOURCE_EXHAUSTED."""
    long = "m" * 60_000
    with pytest.raises(grpc.RpcError) as caught:
        explain(server, patched_png((RED, "top-left")), label=long)
    assert (caught.value.code(), reason_of(caught.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_LABEL")
    assert long[:40] not in caught.value.details()
