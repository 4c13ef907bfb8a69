"""Explain through TF Serving's API: the TFServingBackend asks the version's `explain` signature
with Predict(signature_name="explain") and answers what the embedded backend answers; a version
without the signature (seen in GetModelMetadata) is EXPLANATION_UNSUPPORTED before any Predict.
The whole path too: client -> front -> TFServingBackend -> the TF Serving stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from dermserve.core.backends.base import ModelRef
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.backends.tfserving import TFServingBackend
from dermserve.core.errors import ExplanationUnsupported
from tests.conftest import TINY_INPUT, TINY_MODEL_NAME, tiny_config
from tests.core.backends.tfserving_server import FakeTFServing, start_fake_tfserving
from tests.explain_models import RED, export_region_version, hottest_quadrant, patched_png
from tests.service.conftest import pb, reason_of, running_server


@pytest.fixture(scope="module")
def explain_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dermserve.trainer.export import export_tiny_version

    base = tmp_path_factory.mktemp("explain-tfserving")
    export_tiny_version(base / TINY_MODEL_NAME / "1", tiny_config(1), seed=1, explain=False)
    export_region_version(base, 2)
    return base


@pytest.fixture(scope="module")
def tfserving(explain_base: Path) -> Iterator[FakeTFServing]:
    server = start_fake_tfserving(explain_base, TINY_MODEL_NAME, poll_interval_s=0.2)
    yield server
    server.stop()


@pytest.fixture
def client(tfserving: FakeTFServing) -> Iterator[TFServingBackend]:
    backend = TFServingBackend(tfserving.target, TINY_MODEL_NAME, timeout_s=10.0)
    yield backend
    backend.close()


def images() -> np.ndarray:
    rng = np.random.default_rng(14)
    return rng.integers(0, 256, (3, TINY_INPUT.height, TINY_INPUT.width, 3)).astype(np.uint8)


def test_tfserving_explains_as_the_embedded_backend_does(client: TFServingBackend,
                                                         tfserving: FakeTFServing) -> None:
    embedded: EmbeddedBackend = tfserving.backend
    ref = ModelRef(TINY_MODEL_NAME, version=2)
    classes = np.array([-1, 4, 5], np.int32)
    remote = client.explain(ref, images(), classes)
    local = embedded.explain(ref, images(), classes)
    assert remote.version.version == 2
    np.testing.assert_allclose(remote.heatmaps, local.heatmaps, atol=1e-6)
    np.testing.assert_allclose(remote.probabilities, local.probabilities, atol=1e-6)
    assert remote.class_indices.tolist() == local.class_indices.tolist()
    assert remote.class_indices[1:].tolist() == [4, 5]


def test_a_version_without_the_signature_is_refused_before_predict(
        client: TFServingBackend, tfserving: FakeTFServing) -> None:
    client.resolve(ModelRef(TINY_MODEL_NAME, version=1))  # learns the version's signatures
    predicts = tfserving.calls["Predict"]
    with pytest.raises(ExplanationUnsupported):
        client.explain(ModelRef(TINY_MODEL_NAME, version=1), images(),
                       np.full(3, -1, np.int32))
    assert tfserving.calls["Predict"] == predicts


def test_the_front_explains_over_tfserving(client: TFServingBackend) -> None:
    with running_server(client) as running:
        response = running.stub.Explain(pb.ExplainRequest(
            image=patched_png((RED, "bottom-right")), label="mel"), timeout=20)
        heatmap = np.asarray(response.heatmap.values).reshape(response.heatmap.height,
                                                               response.heatmap.width)
        assert response.explained_label == "mel"
        assert hottest_quadrant(heatmap) == "bottom-right"
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Explain(pb.ExplainRequest(image=patched_png((RED, "top-left")),
                                                   model=pb.ModelSelector(version=1)), timeout=20)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value) == "EXPLANATION_UNSUPPORTED"
