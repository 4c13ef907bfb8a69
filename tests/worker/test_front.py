"""The front service hosts BatchJobs on its own port when Redis is configured, and only then."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from dermserve.service.metrics import Metrics
from dermserve.service.server import create_server, optional_services
from dermserve.service.settings import Settings, StreamSettings
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.worker.settings import WorkerSettings
from tests.service.conftest import reason_of, server_settings
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images


def front_environment(settings: WorkerSettings) -> dict[str, str]:
    return {"DERMSERVE_REDIS_URL": settings.redis_url,
            "DERMSERVE_INPUT_ROOTS": os.pathsep.join(str(root) for root in settings.input_roots),
            "DERMSERVE_BATCH_OUTPUT_DIR": str(settings.batch_output_dir)}


def batch_services(settings: WorkerSettings) -> list[tuple[str, Any]]:
    """What the front hosts when started with the worker's Redis in its environment."""
    return optional_services(Settings.from_sources([], front_environment(settings)))


def test_without_redis_the_front_serves_no_batch_jobs() -> None:
    assert optional_services(Settings.from_sources([], {})) == []


def test_a_job_submitted_to_the_front_is_run_by_a_worker(settings: WorkerSettings,
                                                         input_root: Path) -> None:
    write_images(input_root / "clinic", 6)
    backend = FakeBackend()
    services = batch_services(settings)
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


@contextmanager
def batch_front(settings: WorkerSettings,
                streams: StreamSettings) -> Iterator[pb_grpc.BatchJobsStub]:
    """The front with BatchJobs on Redis and the given stream limits; no worker runs."""
    services = batch_services(settings)
    server, port = create_server(server_settings(streams=streams), FakeBackend(), Metrics(),
                                 extra_services=services)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.BatchJobsStub(channel)
    finally:
        server.stop(None)


def queued_job(stub: pb_grpc.BatchJobsStub) -> str:
    request = pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=["clinic"]))
    job_id: str = stub.SubmitBatchJob(request, timeout=10).job.job_id
    return job_id


def test_watches_of_one_client_are_capped(settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "clinic", 2)
    with batch_front(settings, StreamSettings(max_per_client=2)) as stub:
        job_id = queued_job(stub)
        # One after the other, each read to its first update: three started at once reach the
        # server in any order, and which one is refused would be a race.
        watches = []
        for _ in range(2):
            watches.append(stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job_id), timeout=60))
            assert next(watches[-1]).job.state == pb.BATCH_JOB_STATE_QUEUED
        watches.append(stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job_id), timeout=60))
        with pytest.raises(grpc.RpcError) as caught:
            next(watches[2])
        for watch in watches:
            watch.cancel()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "TOO_MANY_CLIENT_STREAMS"


def test_a_watch_without_progress_idles_out(settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "clinic", 2)
    with batch_front(settings, StreamSettings(idle_timeout_s=0.3)) as stub:
        watch = stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=queued_job(stub)), timeout=60)
        assert next(watch).job.state == pb.BATCH_JOB_STATE_QUEUED  # and no worker runs it
        with pytest.raises(grpc.RpcError) as caught:
            next(watch)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason_of(caught.value) == "STREAM_IDLE"
