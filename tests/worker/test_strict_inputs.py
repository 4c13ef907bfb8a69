"""Client text that the batch API parses or echoes (issue 26, defects 7 and 8), against the real
BatchJobs service over a real channel and a real redis-server: page tokens are ASCII digits of
bounded length or INVALID_ARGUMENT (`str.isdigit()` took '²', which `int()` refused: INTERNAL),
and job ids are refused before they are echoed (a 60,000-character id wrote 60 KB log lines and
an error too large for gRPC's metadata: the client got RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from dermserve.batch.defaults import MAX_CLIENT_JOB_ID_LENGTH
from dermserve.core.config import parse_labels
from dermserve.core.numbers import ascii_natural
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.worker.settings import WorkerSettings
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images
from tests.worker.test_servicer import files, reason, stub  # noqa: F401 (fixture)

LONG_ID = "a" * 60_000  # alphanumeric: it passed the path check and reached Redis
ERROR_DETAILS_LIMIT = 300  # characters; every refusal here is one sentence
LOG_LINE_LIMIT = 1000  # characters


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.fixture
def job_id(stub: pb_grpc.BatchJobsStub, settings: WorkerSettings,  # noqa: F811
           input_root: Path) -> str:
    write_images(input_root / "few", 3)
    submitted = stub.SubmitBatchJob(files("few"), timeout=10)
    run_worker_burst(settings, FakeBackend())
    return submitted.job.job_id


@pytest.mark.parametrize("token", ["²", "١", "¹0", "0" * 19, "-1", " 1", "1 ", "+1", "1_0"])
def test_a_page_token_that_is_not_ascii_digits_is_invalid_argument(
        stub: pb_grpc.BatchJobsStub, job_id: str, token: str) -> None:  # noqa: F811
    error = refusal(lambda: stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
        job_id=job_id, page_token=token), timeout=10))
    assert (error.code(), reason(error)) == (  # type: ignore[attr-defined]
        grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_TOKEN")


def test_an_ascii_page_token_still_pages(stub: pb_grpc.BatchJobsStub,  # noqa: F811
                                         job_id: str) -> None:
    page = stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
        job_id=job_id, page_size=2), timeout=10)
    assert page.next_page_token == "2"
    rest = stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
        job_id=job_id, page_token=page.next_page_token), timeout=10)
    assert len(page.results) + len(rest.results) == 3 and not rest.next_page_token


def id_calls(stub: pb_grpc.BatchJobsStub, job: str) -> dict[str, Callable[[], object]]:  # noqa: F811
    return {
        "get": lambda: stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job), timeout=10),
        "watch": lambda: list(stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job),
                                                 timeout=10)),
        "results": lambda: stub.ListBatchJobResults(
            pb.ListBatchJobResultsRequest(job_id=job), timeout=10),
        "cancel": lambda: stub.CancelBatchJob(pb.CancelBatchJobRequest(job_id=job), timeout=10),
    }


@pytest.mark.parametrize("job", [LONG_ID, "a" * (MAX_CLIENT_JOB_ID_LENGTH + 1), "x" * 5000 + "/",
                                 "\x1b[2J" * 40])
def test_an_over_long_or_malformed_job_id_is_invalid_argument_and_never_echoed(
        stub: pb_grpc.BatchJobsStub, job: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name, call in id_calls(stub, job).items():
        error = refusal(call)
        assert (error.code(), reason(error)) == (  # type: ignore[attr-defined]
            grpc.StatusCode.INVALID_ARGUMENT, "BAD_JOB_ID"), name
        assert len(error.details()) < ERROR_DETAILS_LIMIT  # type: ignore[attr-defined]
        assert job[:40] not in error.details()  # type: ignore[attr-defined]
    assert caplog.records and all(len(record.getMessage()) < LOG_LINE_LIMIT
                                  for record in caplog.records)


def test_a_well_formed_unknown_job_id_is_not_found(stub: pb_grpc.BatchJobsStub) -> None:  # noqa: F811
    for job in ("0" * 32, "b" * MAX_CLIENT_JOB_ID_LENGTH, "screening-unknown"):
        for name, call in id_calls(stub, job).items():
            error = refusal(call)
            assert (error.code(), reason(error)) == (  # type: ignore[attr-defined]
                grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"), (job[:8], name)


@pytest.mark.parametrize("text", ["²", "١", "0" * 19, "", "-3", "٣"])
def test_numbers_are_ascii_digits_of_bounded_length(text: str) -> None:
    assert ascii_natural(text) is None
    with pytest.raises(argparse.ArgumentTypeError):
        parse_labels(f"stable={text}")
    assert ascii_natural("0" * 18) == 0 and parse_labels("stable=3") == {"stable": 3}
