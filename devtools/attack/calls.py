"""The calls the families make, with the suite's deadlines. Nothing waits on time for
synchronisation: every call carries a deadline, and waits are for a condition, bounded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from dermserve.v1 import batch_jobs_pb2 as jobs_pb
from dermserve.v1 import batch_jobs_pb2_grpc as jobs_grpc
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack.stack import TOKEN

CALL_TIMEOUT_S = 10.0  # seconds; a generous deadline for any one hostile call
JOB_TIMEOUT_S = 120.0  # seconds a hostile batch job may take to end (a few images each)
WAIT_S = 30.0  # seconds to wait for a condition the server must reach (a gauge, a count)
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


AUTH = bearer(TOKEN)


def classify(stub: pb_grpc.LesionClassifierStub, image: bytes, request_id: str = "",
             metadata: Metadata = AUTH, timeout: float = CALL_TIMEOUT_S) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = stub.Classify(
        pb.ClassifyRequest(image=image, request_id=request_id), metadata=metadata,
        timeout=timeout)
    return response


def stream_item(image: bytes, request_id: str) -> pb.ClassifyStreamRequest:
    return pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=image,
                                                               request_id=request_id))


def finish_job(stub: jobs_grpc.BatchJobsStub, job_id: str, metadata: Metadata = AUTH
               ) -> jobs_pb.BatchJob:
    """Watch a job to its end (within JOB_TIMEOUT_S: a stalled job ends DEADLINE_EXCEEDED)."""
    job = jobs_pb.BatchJob()
    for update in stub.WatchBatchJob(jobs_pb.WatchBatchJobRequest(job_id=job_id),
                                     metadata=metadata, timeout=JOB_TIMEOUT_S):
        job = update.job
        if job.state >= jobs_pb.BATCH_JOB_STATE_SUCCEEDED:
            break
    return job


def all_results(stub: jobs_grpc.BatchJobsStub, job_id: str, metadata: Metadata = AUTH
                ) -> list[jobs_pb.BatchImageResult]:
    results: list[jobs_pb.BatchImageResult] = []
    token = ""
    while True:
        page = stub.ListBatchJobResults(jobs_pb.ListBatchJobResultsRequest(
            job_id=job_id, page_token=token), metadata=metadata, timeout=CALL_TIMEOUT_S)
        results.extend(page.results)
        token = page.next_page_token
        if not token:
            return results


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Whether `condition` became true within `timeout_s` (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)  # a poll of a condition, not a synchronisation by time
    return condition()


class Counted:
    """Requests handed to gRPC one by one, counted: how far a client's stream was read."""

    def __init__(self, requests: Iterator[pb.ClassifyStreamRequest]) -> None:
        self.requests = requests
        self.taken = 0

    def __iter__(self) -> Iterator[pb.ClassifyStreamRequest]:
        for request in self.requests:
            self.taken += 1
            yield request
