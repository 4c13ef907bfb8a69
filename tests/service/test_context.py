"""Patient context over gRPC, on the real server and the real embedded backend: Classify and
ClassifyStream carry it to a version that takes it, a version without context inputs ignores
it and says so, and a bad value is INVALID_ARGUMENT / INVALID_CONTEXT, never a crash or a log
line with the value."""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.context_models import received
from tests.service.conftest import (
    FakeBackend,
    Running,
    good_jpeg,
    pb,
    reason_of,
    running_server,
)

CONTEXT_VERSION = pb.ModelSelector(version=3)
PLAIN_VERSION = pb.ModelSelector(version=2)
PLANTED_SITE = "left elbow of planted-patient-5531"


def classify(running: Running, model: pb.ModelSelector,
             context: pb.PatientContext | None = None) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = running.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg(), model=model, context=context), timeout=10)
    return response


def read_back(response: pb.ClassifyResponse) -> tuple[float, int, int]:
    return received({item.label: item.probability for item in response.probabilities})


def test_classify_carries_each_field_to_a_version_that_takes_context(
        context_server: Running) -> None:
    full = classify(context_server, CONTEXT_VERSION,
                    pb.PatientContext(age_years=45, sex="male", site="lower extremity"))
    assert read_back(full) == (45.0, 2, 13) and full.context_used
    only_site = classify(context_server, CONTEXT_VERSION, pb.PatientContext(site="head/neck"))
    assert read_back(only_site) == (-1.0, 0, 11) and only_site.context_used
    none = classify(context_server, CONTEXT_VERSION)
    assert read_back(none) == (-1.0, 0, 0) and not none.context_used
    empty = classify(context_server, CONTEXT_VERSION, pb.PatientContext())
    assert read_back(empty) == (-1.0, 0, 0) and not empty.context_used


def test_a_version_without_context_inputs_ignores_it_and_says_so(
        context_server: Running) -> None:
    plain = classify(context_server, PLAIN_VERSION)
    given = classify(context_server, PLAIN_VERSION,
                     pb.PatientContext(age_years=80, sex="female", site="back"))
    assert list(given.probabilities) == list(plain.probabilities)
    assert not given.context_used


def test_get_model_says_which_versions_take_context(context_server: Running) -> None:
    described = {version: context_server.stub.GetModel(
        pb.GetModelRequest(model=pb.ModelSelector(version=version)), timeout=10
    ).version.takes_context for version in (2, 3)}
    assert described == {2: False, 3: True}


@pytest.mark.parametrize("context", [
    pb.PatientContext(age_years=150), pb.PatientContext(age_years=-1),
    pb.PatientContext(age_years=float("nan")), pb.PatientContext(site=PLANTED_SITE)])
def test_a_bad_value_is_invalid_argument_with_its_reason_and_not_logged(
        context_server: Running, context: pb.PatientContext,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for model in (CONTEXT_VERSION, PLAIN_VERSION):  # checked whether the version uses it or not
        with pytest.raises(grpc.RpcError) as caught:
            classify(context_server, model, context)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert reason_of(caught.value) == "INVALID_CONTEXT"
    assert "planted-patient" not in caplog.text
    assert classify(context_server, CONTEXT_VERSION).probabilities  # the server goes on


def test_classify_stream_carries_context_and_answers_a_bad_one_in_its_place(
        context_server: Running) -> None:
    requests = [pb.ClassifyRequest(image=good_jpeg(), model=CONTEXT_VERSION, request_id=name,
                                   context=context)
                for name, context in (("good", pb.PatientContext(age_years=30, sex="female")),
                                      ("bad", pb.PatientContext(age_years=200)),
                                      ("none", None))]
    answers = {answer.request_id: answer for answer in context_server.stub.ClassifyStream(
        iter([pb.ClassifyStreamRequest(request=request) for request in requests]), timeout=20)}
    assert read_back(answers["good"].result) == (30.0, 1, 0)
    assert answers["bad"].error.reason == "INVALID_CONTEXT"
    assert answers["bad"].error.code == "INVALID_ARGUMENT"
    assert read_back(answers["none"].result) == (-1.0, 0, 0)


def test_explain_carries_context_to_a_version_whose_explain_takes_it(
        context_server: Running) -> None:
    explained = context_server.stub.Explain(pb.ExplainRequest(
        image=good_jpeg(), model=CONTEXT_VERSION,
        context=pb.PatientContext(age_years=45, sex="female", site="chest")), timeout=10)
    assert read_back(explained.classification) == (45.0, 1, 5)
    assert explained.classification.context_used and explained.heatmap.height == 2


def test_explain_refuses_context_a_version_uses_but_cannot_explain_with() -> None:
    """A version whose serving_default takes context but whose explain does not: its heatmap
    would explain another answer than Classify's."""
    backend = FakeBackend()
    backend.context_versions = {2}
    with running_server(backend) as running, pytest.raises(grpc.RpcError) as caught:
        running.stub.Explain(pb.ExplainRequest(image=good_jpeg(),
                                               context=pb.PatientContext(sex="male")), timeout=10)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert reason_of(caught.value) == "EXPLANATION_WITHOUT_CONTEXT"


def test_explain_ignores_context_for_a_version_without_context_inputs(
        context_server: Running) -> None:
    context = pb.PatientContext(age_years=45)
    explained = context_server.stub.Explain(
        pb.ExplainRequest(image=good_jpeg(), model=PLAIN_VERSION, context=context), timeout=10)
    plain = classify(context_server, PLAIN_VERSION)
    assert explained.classification.top_label == plain.top_label
    assert not explained.classification.context_used
    with pytest.raises(grpc.RpcError) as bad:
        context_server.stub.Explain(pb.ExplainRequest(
            image=good_jpeg(), model=PLAIN_VERSION, context=pb.PatientContext(site="elbow")),
            timeout=10)
    assert reason_of(bad.value) == "INVALID_CONTEXT"
