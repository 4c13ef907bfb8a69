"""The soak's batch job: submitted through BatchJobs at the start (an inline manifest of the chosen
images), waited for once the load ends, and checked: every image listed exactly once by
ListBatchJobResults and in the JSONL export, none missing, none foreign."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc

POLL_S = 2.0  # seconds between GetBatchJob calls while waiting for the job to end
CALL_TIMEOUT_S = 30.0  # seconds per BatchJobs call
PAGE_SIZE = 1000  # results per ListBatchJobResults page: the API's maximum
TERMINAL = {pb.BATCH_JOB_STATE_SUCCEEDED, pb.BATCH_JOB_STATE_FAILED, pb.BATCH_JOB_STATE_CANCELLED}


def submit(stub: pb_grpc.BatchJobsStub, references: Sequence[str]) -> str:
    csv = "path\n" + "".join(f"{reference}\n" for reference in references)
    request = pb.SubmitBatchJobRequest(manifest=pb.Manifest(csv=csv))
    job_id: str = stub.SubmitBatchJob(request, timeout=CALL_TIMEOUT_S).job.job_id
    return job_id


def wait_for_end(stub: pb_grpc.BatchJobsStub, job_id: str, timeout_s: float) -> pb.BatchJob | None:
    """The job once it is SUCCEEDED, FAILED or CANCELLED; None after `timeout_s`. A call that
    fails (Redis or the front restarting) is retried at the next poll."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            job = stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job_id),
                                   timeout=CALL_TIMEOUT_S).job
            if job.state in TERMINAL:
                return job
        except grpc.RpcError:
            pass
        time.sleep(POLL_S)
    return None


def progress(stub: pb_grpc.BatchJobsStub, job_id: str) -> float:
    """Images the job has finished; infinity once it has ended; -1 when the API does not answer."""
    try:
        job = stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S).job
    except grpc.RpcError:
        return -1.0
    return float("inf") if job.state in TERMINAL else float(job.done_images + job.failed_images)


def listed_references(stub: pb_grpc.BatchJobsStub, job_id: str) -> tuple[list[str], list[int]]:
    references: list[str] = []
    indices: list[int] = []
    token = ""
    while True:
        page = stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
            job_id=job_id, page_size=PAGE_SIZE, page_token=token), timeout=CALL_TIMEOUT_S)
        references += [result.reference for result in page.results]
        indices += [result.index for result in page.results]
        token = page.next_page_token
        if not token:
            return references, indices


def exactly_once(seen: Sequence[str], expected: Sequence[str]) -> dict[str, int]:
    counts = Counter(seen)
    return {"duplicated": sum(1 for n in counts.values() if n > 1),
            "missing": len(set(expected) - counts.keys()),
            "unexpected": len(counts.keys() - set(expected))}


def exported_references(path: str) -> list[str]:
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line)["reference"] for line in lines if line.strip()]


def check(stub: pb_grpc.BatchJobsStub, job_id: str, expected: Sequence[str],
          timeout_s: float, origin_wall: float) -> dict[str, Any]:
    """The job's outcome and the exactly-once checks, as the report's `batch_job`."""
    job = wait_for_end(stub, job_id, timeout_s)
    if job is None:
        return {"job_id": job_id, "images": len(expected), "state": "NOT_FINISHED",
                "every_image_exactly_once": False}
    references, indices = listed_references(stub, job_id)
    listed = exactly_once(references, expected)
    exported = exactly_once(exported_references(job.results_jsonl_path), expected)
    finished = job.finish_time.seconds + job.finish_time.nanos / 1e9 - origin_wall
    return {"job_id": job_id, "images": len(expected), "state": pb.BatchJobState.Name(job.state),
            "done": job.done_images, "failed": job.failed_images,
            "abstained": job.abstained_images, "finished_at_s": round(finished, 1),
            "listed": listed, "exported_jsonl": exported,
            "indices_in_order": indices == list(range(len(expected))),
            "every_image_exactly_once": (job.state == pb.BATCH_JOB_STATE_SUCCEEDED
                                         and not any(listed.values())
                                         and not any(exported.values())
                                         and indices == list(range(len(expected))))}
