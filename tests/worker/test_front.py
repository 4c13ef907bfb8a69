"""The front service hosts BatchJobs on its own port when Redis is configured, and only then."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from service.metrics import Metrics
from service.server import create_server, optional_services
from tests.service.conftest import server_settings
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images
from worker.settings import WorkerSettings


def front_environment(settings: WorkerSettings) -> dict[str, str]:
    return {"DERMSERVE_REDIS_URL": settings.redis_url,
            "DERMSERVE_INPUT_ROOTS": os.pathsep.join(str(root) for root in settings.input_roots),
            "DERMSERVE_BATCH_OUTPUT_DIR": str(settings.batch_output_dir)}


def test_without_redis_the_front_serves_no_batch_jobs() -> None:
    assert optional_services({}) == []


def test_a_job_submitted_to_the_front_is_run_by_a_worker(settings: WorkerSettings,
                                                         input_root: Path) -> None:
    write_images(input_root / "clinic", 6)
    backend = FakeBackend()
    services = optional_services(front_environment(settings))
    assert [name for name, _ in services] == ["dermserve.v1.BatchJobs"]
    server, port = create_server(server_settings(), backend, Metrics(), extra_services=services)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BatchJobsStub(channel)
            job = stub.SubmitBatchJob(pb.SubmitBatchJobRequest(
                files=pb.FileReferences(paths=["clinic"])), timeout=10).job
            run_worker_burst(settings, backend)
            done = stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job.job_id), timeout=10).job
    finally:
        server.stop(None)
    assert done.state == pb.BATCH_JOB_STATE_SUCCEEDED
    assert (done.total_images, done.done_images, done.failed_images) == (6, 6, 0)
