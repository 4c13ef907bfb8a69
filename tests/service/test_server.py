"""The front service over a real channel: results, health, reflection, models, deadlines,
outages, streams, internal errors and metrics."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.service.conftest import (
    FakeBackend,
    Running,
    good_jpeg,
    pb,
    reason_of,
    running_server,
    wait_until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(running: Running, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(running.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)


def test_classify_returns_every_class_sorted(fake_server: Running) -> None:
    response = fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg(), request_id="r-1"),
                                         timeout=10)
    probabilities = [item.probability for item in response.probabilities]
    assert len(probabilities) == 7
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert response.top_label == response.probabilities[0].label == "bcc"  # version 2: label 1
    assert response.probabilities[0].display_name == "Basal cell carcinoma"
    assert (response.model.name, response.model.version) == ("ham10000", 2)
    assert response.request_id == "r-1"
    assert not response.abstained


def test_request_id_is_generated_when_absent_and_checked_when_given(fake_server: Running) -> None:
    response = fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=10)
    assert len(response.request_id) == 32
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg(), request_id="x" * 129),
                                  timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INVALID_REQUEST_ID"


def test_version_pinning_and_labels(fake_server: Running, fake_backend: FakeBackend) -> None:
    fake_backend.labels["stable"] = 1
    pinned = fake_server.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg(), model=pb.ModelSelector(version=1)), timeout=10)
    labelled = fake_server.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg(), model=pb.ModelSelector(version_label="stable")),
        timeout=10)
    latest = fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=10)
    assert pinned.model.version == labelled.model.version == 1
    assert pinned.top_label == "akiec"
    assert latest.model.version == 2
    for selector in (pb.ModelSelector(version=7), pb.ModelSelector(version_label="canary")):
        with pytest.raises(grpc.RpcError) as caught:
            fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg(), model=selector),
                                      timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(caught.value) == "MODEL_NOT_FOUND"


def test_get_model_and_list_models(fake_server: Running, fake_backend: FakeBackend) -> None:
    fake_backend.labels["stable"] = 1
    described = fake_server.stub.GetModel(pb.GetModelRequest(), timeout=5).version
    assert described.model.version == 2
    assert described.state == pb.MODEL_VERSION_STATE_AVAILABLE
    assert list(described.labels) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert described.display_names[4] == "Melanoma"
    assert (described.input_size.height, described.input_size.width) == (16, 16)
    assert '"balanced_accuracy": 0.5' in described.metrics_json
    stable = fake_server.stub.GetModel(
        pb.GetModelRequest(model=pb.ModelSelector(version_label="stable")), timeout=5).version
    assert stable.model.version == 1 and list(stable.version_labels) == ["stable"]
    listed = fake_server.stub.ListModels(pb.ListModelsRequest(), timeout=5).versions
    assert [v.model.version for v in listed] == [2, 1]


def test_health_follows_the_backend(fake_backend: FakeBackend) -> None:
    fake_backend.up = False
    with running_server(fake_backend) as running:
        service = "dermserve.v1.LesionClassifier"
        time.sleep(0.2)  # several probe periods
        assert health_status(running) == NOT_SERVING
        assert health_status(running, service) == NOT_SERVING
        fake_backend.up = True
        assert wait_until(lambda: health_status(running, service) == SERVING)
        assert health_status(running) == SERVING
        assert running.metrics.serving._value.get() == 1
        fake_backend.up = False
        assert wait_until(lambda: health_status(running) == NOT_SERVING)
        assert running.metrics.serving._value.get() == 0


def test_health_is_not_serving_without_any_version() -> None:
    empty = FakeBackend(versions=())
    with running_server(empty) as running:
        time.sleep(0.2)
        assert health_status(running) == NOT_SERVING


def test_reflection_lists_the_services(fake_server: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(fake_server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"dermserve.v1.LesionClassifier", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_backend_down_is_unavailable_within_the_deadline_then_recovers(
        fake_server: Running, fake_backend: FakeBackend) -> None:
    fake_backend.up = False
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=2)
    assert time.monotonic() - started < 2
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(caught.value) == "BACKEND_UNAVAILABLE"
    fake_backend.up = True
    response = fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=2)
    assert response.model.version == 2


def test_slow_backend_hits_the_callers_deadline(fake_server: Running,
                                                fake_backend: FakeBackend) -> None:
    fake_backend.delay_s = 1.5
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0
    fake_backend.delay_s = 0.0
    assert fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5).top_label


def test_internal_error_leaks_no_details(fake_server: Running, fake_backend: FakeBackend,
                                        caplog: pytest.LogCaptureFixture) -> None:
    fake_backend.failure = RuntimeError("secret path /etc/model-key")
    with pytest.raises(grpc.RpcError) as caught:
        fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "incident" in (caught.value.details() or "")
    assert reason_of(caught.value) == "INTERNAL"
    assert "secret path" in caplog.text  # the operators do get the details


def test_classify_stream_answers_each_image(fake_server: Running) -> None:
    good, bad = good_jpeg(), b"GIF89a not really"
    requests = [pb.ClassifyStreamRequest(request=pb.ClassifyRequest(
        image=good if i % 3 else bad, request_id=f"img-{i}")) for i in range(12)]
    answers = {a.request_id: a for a in fake_server.stub.ClassifyStream(iter(requests),
                                                                       timeout=10)}
    assert sorted(answers) == sorted(f"img-{i}" for i in range(12))
    for i in range(12):
        answer = answers[f"img-{i}"]
        if i % 3:
            assert answer.WhichOneof("outcome") == "result"
            assert len(answer.result.probabilities) == 7
        else:
            assert answer.WhichOneof("outcome") == "error"
            assert (answer.error.code, answer.error.reason) == ("INVALID_ARGUMENT",
                                                                "UNSUPPORTED_FORMAT")


def test_classify_stream_reports_backend_outage_per_image(fake_server: Running,
                                                          fake_backend: FakeBackend) -> None:
    fake_backend.up = False
    requests = [pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=good_jpeg()))] * 3
    answers = list(fake_server.stub.ClassifyStream(iter(requests), timeout=10))
    assert len(answers) == 3
    assert {a.error.code for a in answers} == {"UNAVAILABLE"}
    assert all(len(a.request_id) == 32 for a in answers)


def test_metrics_count_calls_predictions_and_rejections(fake_server: Running) -> None:
    fake_server.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5)
    with pytest.raises(grpc.RpcError):
        fake_server.stub.Classify(pb.ClassifyRequest(image=b""), timeout=5)
    registry = fake_server.metrics.registry
    ok = registry.get_sample_value("dermserve_requests_total",
                                   {"method": "Classify", "code": "OK"})
    bad = registry.get_sample_value("dermserve_requests_total",
                                    {"method": "Classify", "code": "INVALID_ARGUMENT"})
    assert (ok, bad) == (1.0, 1.0)
    assert registry.get_sample_value("dermserve_predictions_total",
                                     {"label": "bcc", "model_version": "2"}) == 1.0
    assert registry.get_sample_value("dermserve_image_rejections_total",
                                     {"reason": "EMPTY_IMAGE"}) == 1.0
    assert registry.get_sample_value("dermserve_decode_latency_seconds_count") == 1.0
    assert registry.get_sample_value("dermserve_model_latency_seconds_count") == 1.0
    assert registry.get_sample_value("dermserve_request_latency_seconds_count",
                                     {"method": "Classify"}) == 2.0


def test_graceful_stop_drains_in_flight_calls(fake_backend: FakeBackend) -> None:
    fake_backend.delay_s = 0.4
    with running_server(fake_backend) as running:
        future = running.stub.Classify.future(pb.ClassifyRequest(image=good_jpeg()), timeout=5)
        time.sleep(0.1)
        running.server.stop(2.0)
        assert future.result().top_label == "bcc"


def test_abstention_is_reported_and_counted(fake_backend: FakeBackend) -> None:
    from tests.service.conftest import server_settings

    with running_server(fake_backend, server_settings(min_confidence_floor=0.9)) as running:
        response = running.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5)
        assert response.abstained
        assert response.abstention_reason == pb.ABSTENTION_REASON_LOW_CONFIDENCE
        assert response.top_label == "bcc"  # still given, for information
        assert running.metrics.registry.get_sample_value(
            "dermserve_abstentions_total",
            {"reason": "LOW_CONFIDENCE", "model_version": "2"}) == 1.0


def test_extra_services_share_health_reflection_and_error_mapping(
        fake_backend: FakeBackend) -> None:
    from dermserve.core.errors import JobNotFound
    from dermserve.service.metrics import Metrics
    from dermserve.service.server import create_server
    from tests.service.conftest import server_settings

    def missing_job(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise JobNotFound("no job 42")

    def add(server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            missing_job, request_deserializer=lambda b: b, response_serializer=lambda b: b)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.v1.Jobs", {"Get": handler}),))

    server, port = create_server(server_settings(), fake_backend, Metrics(),
                                 extra_services=[("test.v1.Jobs", add)])
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.v1.Jobs/Get", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as caught:
                call(b"42", timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert reason_of(caught.value) == "JOB_NOT_FOUND"
            stub = health_pb2_grpc.HealthStub(channel)
            assert wait_until(lambda: stub.Check(health_pb2.HealthCheckRequest(
                service="test.v1.Jobs"), timeout=2).status == SERVING)
    finally:
        server.stop(0.5)
