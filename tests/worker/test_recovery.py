"""Failure recovery with real processes: `python -m dermserve.worker` subprocesses on the tiny
SavedModel, a real redis-server with AOF. A worker SIGKILLed in the middle of a chunk, and a Redis
restart in the middle of a job, must both end with exactly one result per image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.worker.settings import WorkerSettings
from devtools.stack.redis import RedisServer
from tests.worker import hold
from tests.worker.conftest import wait_until, write_images

REPO = Path(__file__).resolve().parents[2]
IMAGES = 240
CHUNK = 12  # 20 chunks; batches of one image, so a chunk is mostly model time


@pytest.fixture
def settings(settings: WorkerSettings, model_base: Path) -> WorkerSettings:
    """The shared settings, with the tiny SavedModel and room for a longer job."""
    return settings.with_overrides(model_base=model_base, chunk_size=CHUNK, images_per_call=1,
                                   max_images_per_job=1000, burst=False)


class Workers:
    """Starts `python -m dermserve.worker` processes and stops every one it started."""

    def __init__(self, settings: WorkerSettings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, hold_first_chunk: bool = False) -> subprocess.Popen[bytes]:
        """A worker; with `hold_first_chunk`, one that announces its first chunk and stays
        inside it (tests/worker/hold.py) until killed."""
        s = self.settings
        args = ["--redis-url", s.redis_url, "--input-roots", os.pathsep.join(map(str,
                                                                                   s.input_roots)),
                "--batch-output-dir", str(s.batch_output_dir), "--model-base", str(s.model_base),
                "--model-name", s.model_name, "--chunk-size", str(s.chunk_size),
                "--images-per-call", str(s.images_per_call), "--lease-ttl-s", str(s.lease_ttl_s),
                "--reap-interval-s", str(s.reap_interval_s), "--reap-grace-s", "0",
                "--poll-interval-s", "30", "--worker-metrics-port", "0"]
        log = (self.logs / f"worker-{len(self.processes)}.log").open("wb")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
        module = "tests.worker.hold" if hold_first_chunk else "dermserve.worker"
        process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def workers(settings: WorkerSettings, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(settings, tmp_path)
    yield group
    group.stop_all()


def submit(jobs: JobService, input_root: Path) -> str:
    write_images(input_root / "archive", IMAGES)
    return jobs.submit(SubmitRequest(JobInput(paths=["archive"]))).job.job_id


def running_chunks(jobs: JobService, job_id: str, pid: int | None = None) -> list[int]:
    """Chunks RUNNING now (and leased by the worker with that pid, when given)."""
    states = jobs.store.client.hgetall(jobs.store.chunks_key(job_id))
    running = [int(index) for index, state in states.items() if state == "R"]
    if pid is None:
        return running
    holders = [jobs.store.client.get(jobs.store.lease_key(job_id, i)) or "" for i in running]
    return [i for i, holder in zip(running, holders, strict=True) if f"-{pid}:" in holder]


def assert_exactly_one_result_per_image(jobs: JobService, job_id: str) -> None:
    job = jobs.get(job_id)
    assert job.state is JobState.SUCCEEDED, job
    assert (job.done, job.failed, job.total) == (IMAGES, 0, IMAGES)
    jsonl = jobs.export_paths(job_id)["jsonl"]
    indexes = [json.loads(line)["index"] for line in jsonl.read_text().splitlines()]
    assert indexes == list(range(IMAGES))
    listed, token = [], ""
    while True:
        page = jobs.list_results(job_id, 100, token)
        listed.extend(result.index for result in page.results)
        token = page.next_page_token
        if not token:
            break
    assert listed == list(range(IMAGES))


def inside_a_chunk(jobs: JobService, timeout_s: int = 120) -> tuple[str, int, int]:
    """(job id, chunk, pid) announced by a worker holding its first chunk (tests/worker/hold.py)."""
    announced = jobs.store.client.blpop([hold.inside_key(jobs.store)], timeout=timeout_s)
    assert announced, "no worker announced that it is inside a chunk"
    job_id, index, pid = announced[1].rsplit(":", 2)
    return job_id, int(index), int(pid)


def test_a_worker_killed_mid_chunk_loses_and_duplicates_nothing(
        jobs: JobService, workers: Workers, input_root: Path) -> None:
    job_id = submit(jobs, input_root)
    first = workers.start(hold_first_chunk=True)
    held_job, held_chunk, pid = inside_a_chunk(jobs)  # the kill point, not a race
    assert (held_job, pid) == (job_id, first.pid)
    workers.start()  # the survivor: it runs the other chunks, then the killed one
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed = running_chunks(jobs, job_id, first.pid)
    assert killed == [held_chunk], "the worker was not inside its chunk when it died"
    progress = jobs.get(job_id)
    assert progress.state is JobState.RUNNING and progress.done < IMAGES

    wait_until(lambda: jobs.get(job_id).state.terminal, "a second worker to finish the job",
               timeout_s=120, interval_s=0.1)

    assert_exactly_one_result_per_image(jobs, job_id)
    attempts = jobs.store.attempts(job_id)
    assert all(attempts[index] >= 2 for index in killed)  # the killed chunk ran again
    for index in killed:
        assert len(jobs.results.read_chunk_results(job_id, index)) == CHUNK


def test_a_redis_restart_mid_job_loses_no_job(
        jobs: JobService, workers: Workers, redis_server: RedisServer, input_root: Path) -> None:
    job_id = submit(jobs, input_root)
    workers.start()
    wait_until(lambda: jobs.get(job_id).chunks_done >= 2, "progress", timeout_s=120,
               interval_s=0.01)
    redis_server.stop()
    time.sleep(3.0)  # down longer than a lease: the worker must retry, and leases lapse
    redis_server.start()  # same port and directory: the AOF brings the job back

    assert jobs.get(job_id).total == IMAGES  # the job survived the restart
    wait_until(lambda: jobs.get(job_id).state.terminal, "the worker to reconnect and finish",
               timeout_s=120, interval_s=0.1)
    assert_exactly_one_result_per_image(jobs, job_id)
    worker = workers.processes[0]
    assert worker.poll() is None  # the same worker, still alive
    worker.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod: leave cleanly, and soon
    assert worker.wait(timeout=30) == 0
