"""The whole path over real gRPC twice: client -> front service -> TFServingBackend -> the TF
Serving stand-in on real SavedModels. Covers pinning, backend down (UNAVAILABLE within the
deadline, health NOT_SERVING) and recovery without restarting the front."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.core.backends.tfserving import TFServingBackend
from tests.conftest import TINY_MODEL_NAME
from tests.core.backends.helpers import wait_until
from tests.core.backends.tfserving_server import FakeTFServing, start_fake_tfserving
from tests.service.conftest import Running, good_jpeg, pb, running_server

BACKEND_TIMEOUT_S = 2.0
SLACK_S = 1.0
"""Allowed beyond the backend deadline: the front's own work on two shared CPUs."""


@pytest.fixture
def client(fake_tfserving: FakeTFServing) -> Iterator[TFServingBackend]:
    backend = TFServingBackend(fake_tfserving.target, TINY_MODEL_NAME,
                               timeout_s=BACKEND_TIMEOUT_S)
    yield backend
    backend.close()


def health(running: Running) -> int:
    stub = health_pb2_grpc.HealthStub(running.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)


def classify(running: Running, selector: pb.ModelSelector | None = None) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = running.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg(), model=selector), timeout=10)
    return response


def answers(running: Running) -> bool:
    try:
        return classify(running).model.version == 2
    except grpc.RpcError:
        return False


def test_classify_through_tf_serving_survives_an_outage(
        fake_tfserving: FakeTFServing, client: TFServingBackend, model_base: Path) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    with running_server(client) as running:
        wait_until(lambda: health(running) == serving, what="health SERVING")
        response = classify(running)
        assert len(response.probabilities) == 7 and response.model.version == 2
        assert classify(running, pb.ModelSelector(version=1)).model.version == 1
        assert classify(running, pb.ModelSelector(version_label="stable")).model.version == 1

        port = fake_tfserving.port
        fake_tfserving.stop()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as down:
            classify(running)
        assert down.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < BACKEND_TIMEOUT_S + SLACK_S
        wait_until(lambda: health(running) != serving, what="health NOT_SERVING")

        restarted = start_fake_tfserving(model_base, TINY_MODEL_NAME, port=port)
        try:
            wait_until(lambda: answers(running), timeout_s=15.0, what="recovery")
            wait_until(lambda: health(running) == serving, what="health SERVING again")
        finally:
            restarted.stop()
