"""The front service on the real embedded backend and real tiny SavedModels: version pinning,
labels, and hot reload of a new version during traffic without a failed call."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.batching import MicroBatcher
from tests.conftest import TINY_MODEL_NAME
from tests.service.conftest import Running, good_jpeg, pb, running_server, wait_until


@pytest.fixture
def embedded(model_base: Path) -> Iterator[MicroBatcher]:
    backend = EmbeddedBackend(model_base, TINY_MODEL_NAME, poll_interval_s=0.2,
                              version_labels={"stable": 1})
    backend.start()
    batcher = MicroBatcher(backend)
    yield batcher
    batcher.close()


@pytest.fixture
def real_server(embedded: MicroBatcher) -> Iterator[Running]:
    with running_server(embedded) as running:
        yield running


def classify(running: Running, selector: pb.ModelSelector | None = None) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = running.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg(), model=selector), timeout=10)
    return response


def test_latest_pinned_and_labelled_versions_answer(real_server: Running) -> None:
    latest = classify(real_server)
    first = classify(real_server, pb.ModelSelector(version=1))
    stable = classify(real_server, pb.ModelSelector(version_label="stable"))
    assert latest.model.version == 2
    assert first.model.version == stable.model.version == 1
    assert [p.probability for p in first.probabilities] == \
        [p.probability for p in stable.probabilities]
    assert [(p.label, p.probability) for p in first.probabilities] != \
        [(p.label, p.probability) for p in latest.probabilities]
    assert sum(p.probability for p in latest.probabilities) == pytest.approx(1.0, abs=1e-4)


def test_models_are_described(real_server: Running) -> None:
    listed = real_server.stub.ListModels(pb.ListModelsRequest(), timeout=5).versions
    assert [v.model.version for v in listed] == [2, 1]
    described = real_server.stub.GetModel(
        pb.GetModelRequest(model=pb.ModelSelector(version=1)), timeout=5).version
    assert list(described.version_labels) == ["stable"]
    assert described.description == "tiny test model, seed 1"
    assert (described.input_size.height, described.input_size.width) == (32, 32)


def test_health_turns_serving_on_the_real_backend(real_server: Running) -> None:
    stub = health_pb2_grpc.HealthStub(real_server.channel)

    def serving() -> bool:
        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    assert wait_until(serving)


def test_hot_reload_during_traffic_fails_no_call(real_server: Running, model_base: Path,
                                                 tiny_model_template: Path) -> None:
    failures: list[grpc.RpcError] = []
    versions: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                versions.append(classify(real_server).model.version)
            except grpc.RpcError as exc:
                failures.append(exc)

    clients = [threading.Thread(target=traffic) for _ in range(3)]
    for client in clients:
        client.start()
    # Publish version 3 the way the trainer does: copy under a non-numeric name, then rename.
    staging = model_base / TINY_MODEL_NAME / "tmp-publish"
    shutil.copytree(tiny_model_template / TINY_MODEL_NAME / "1", staging)
    staging.rename(model_base / TINY_MODEL_NAME / "3")
    reloaded = wait_until(lambda: bool(versions) and versions[-1] == 3, timeout_s=30)
    # Then retire version 2 while calls keep coming.
    shutil.rmtree(model_base / TINY_MODEL_NAME / "2")
    wait_until(lambda: 2 not in [v.model.version for v in real_server.stub.ListModels(
        pb.ListModelsRequest(), timeout=5).versions if v.state ==
        pb.MODEL_VERSION_STATE_AVAILABLE], timeout_s=10)
    stop.set()
    for client in clients:
        client.join(10)
    assert reloaded, "version 3 never answered"
    assert failures == []
    assert versions[0] == 2 and versions[-1] == 3


def test_clients_see_reasons_not_server_paths_or_tensorflow_text(model_base: Path,
                                                                 tmp_path: Path) -> None:
    broken = model_base / TINY_MODEL_NAME / "4"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a protobuf")
    with closing_backend(model_base) as backend, running_server(backend) as running:
        listed = {v.model.version: v for v in
                  running.stub.ListModels(pb.ListModelsRequest(), timeout=5).versions}
    assert "MODEL_LOAD_FAILED" in listed[4].error
    assert str(model_base) not in listed[4].error and "Error" not in listed[4].error
    with closing_backend(tmp_path / "missing") as backend, running_server(backend) as running:
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "does not exist" in (caught.value.details() or "")
    assert str(tmp_path) not in (caught.value.details() or "")


@contextmanager
def closing_backend(model_base: Path) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(model_base, TINY_MODEL_NAME, poll_interval_s=3600.0, settle_s=0.05)
    backend.start()
    try:
        yield backend
    finally:
        backend.close()
