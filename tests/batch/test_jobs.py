"""Batch jobs end to end in one process: the job service, rq queues on a real redis-server, an
in-process SimpleWorker, and the real classifier core over a small fake backend."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dermserve.batch.jobs import InlineImage, JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.core.errors import BackendUnavailable, FailedPrecondition, JobNotFound
from dermserve.core.identity import ANONYMOUS
from dermserve.worker.settings import WorkerSettings
from tests.worker.conftest import (
    FakeBackend,
    jpeg_bytes,
    run_worker_burst,
    wait_until,
    write_images,
)


def submit_dir(jobs: JobService, directory: Path, **kwargs: object) -> str:
    outcome = jobs.submit(SubmitRequest(JobInput(paths=[str(directory)]), **kwargs))  # type: ignore[arg-type]
    assert outcome.created
    return outcome.job.job_id


def all_results(jobs: JobService, job_id: str, page_size: int = 3) -> list:  # type: ignore[type-arg]
    results, token = [], ""
    while True:
        page = jobs.list_results(job_id, page_size, token)
        results.extend(page.results)
        token = page.next_page_token
        if not token:
            return results


def test_job_runs_to_completion_with_one_result_per_image(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "batch", 10)
    job_id = submit_dir(jobs, input_root / "batch")
    queued = jobs.get(job_id)
    assert (queued.state, queued.total, queued.chunk_count) == (JobState.QUEUED, 10, 3)

    backend = FakeBackend()
    run_worker_burst(settings, backend)

    job = jobs.get(job_id)
    assert job.state is JobState.SUCCEEDED
    assert (job.done, job.failed, job.total) == (10, 0, 10)
    assert job.resolved_version == 1 and job.started and job.finished
    assert backend.images == 10
    results = all_results(jobs, job_id)
    assert [r.index for r in results] == list(range(10))
    assert [Path(r.reference).name for r in results] == [f"img_{i:04d}.jpg" for i in range(10)]
    assert all(r.error is None and len(r.probabilities) == 7 for r in results)
    assert all(abs(sum(p for _, _, p in r.probabilities) - 1) < 1e-4 for r in results)
    assert job.abstained == sum(r.abstained for r in results)

    paths = jobs.export_paths(job_id)
    jsonl, csv_path = paths["jsonl"], paths["csv"]
    lines = jsonl.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(10))
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 10 and {row["status"] for row in rows} <= {"classified", "abstained"}
    assert "p_mel" in rows[0] and rows[0]["model_version"] == "1"


def test_bad_images_fail_alone_with_their_reason(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    paths = write_images(input_root / "mixed", 6)
    paths[1].write_bytes(jpeg_bytes(99)[:200])  # truncated JPEG
    paths[4].write_bytes(b"GIF89a not an image we take")
    job_id = submit_dir(jobs, input_root / "mixed")
    paths[5].unlink()  # gone between submission and the run

    run_worker_burst(settings, FakeBackend())

    job = jobs.get(job_id)
    assert job.state is JobState.SUCCEEDED
    assert (job.done, job.failed) == (6, 3)
    results = all_results(jobs, job_id)
    reasons = {r.index: r.error.reason for r in results if r.error is not None}
    assert reasons == {1: "CORRUPT_IMAGE", 4: "UNSUPPORTED_FORMAT", 5: "FILE_NOT_FOUND"}
    assert all(r.probabilities for r in results if r.error is None)


def test_resubmission_with_the_same_client_job_id_returns_the_first_job(
        jobs: JobService, input_root: Path) -> None:
    write_images(input_root / "a", 5)
    request = SubmitRequest(JobInput(paths=["a"]), client_job_id="pacs-export-2026-11-23")
    first = jobs.submit(request)
    second = jobs.submit(request)
    assert first.created and not second.created
    assert second.job.job_id == first.job.job_id
    assert sum(jobs.queues.depth().values()) == first.job.chunk_count  # queued once
    other = jobs.submit(SubmitRequest(JobInput(paths=["a"]), client_job_id="another"))
    assert other.created and other.job.job_id != first.job.job_id


def test_the_client_job_id_a_user_chose_names_the_job_too(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    from dermserve.core.errors import InvalidRequest
    from dermserve.core.identity import Caller

    write_images(input_root / "a", 3)
    alice, bob = Caller("token:alice"), Caller("token:bob")
    job_id = jobs.submit(SubmitRequest(JobInput(paths=["a"]), client_job_id="ham-2026-11-23"),
                         alice).job.job_id
    assert jobs.get("ham-2026-11-23", alice).job_id == job_id
    run_worker_burst(settings, FakeBackend())
    page = jobs.list_results("ham-2026-11-23", 10, "", alice)
    assert page.job.job_id == job_id and len(page.results) == 3
    assert [record.job_id for record in jobs.watch("ham-2026-11-23", caller=alice)] == [job_id]
    with pytest.raises(FailedPrecondition):  # it names the job: cancelling a finished one
        jobs.cancel("ham-2026-11-23", alice)
    # another owner's name for it is not a name for them, nor is a name nobody chose
    for ref, caller in (("ham-2026-11-23", bob), ("never-submitted", alice)):
        with pytest.raises(JobNotFound):
            jobs.get(ref, caller)
    with pytest.raises(InvalidRequest, match="a job id is the server.s 32 hex digits"):
        jobs.get("../etc", alice)


def test_inline_images_are_classified(jobs: JobService, settings: WorkerSettings) -> None:
    images = [InlineImage(f"photo-{i}", jpeg_bytes(i)) for i in range(3)]
    images.append(InlineImage("", b"\x89PNG\r\n\x1a\n broken"))
    job_id = jobs.submit(SubmitRequest(JobInput(inline=images))).job.job_id
    run_worker_burst(settings, FakeBackend())
    results = all_results(jobs, job_id, page_size=100)
    assert [r.reference for r in results] == ["photo-0", "photo-1", "photo-2", "inline:3"]
    assert results[3].error is not None and results[3].error.reason == "CORRUPT_IMAGE"
    assert jobs.get(job_id).failed == 1


def test_cancel_stops_outstanding_chunks(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "big", 20)  # 5 chunks of 4, batches of 2
    job_id = submit_dir(jobs, input_root / "big")

    def cancel_on_second_batch(call: int) -> None:
        if call == 2:
            jobs.cancel(job_id)

    backend = FakeBackend(cancel_on_second_batch)
    run_worker_burst(settings, backend)

    job = jobs.get(job_id)
    assert job.state is JobState.CANCELLED and job.finished
    assert backend.calls == 2  # the running chunk stopped; the other four never classified
    assert job.done == 0  # the interrupted chunk's partial results are not counted
    assert all_results(jobs, job_id) == []
    assert jobs.cancel(job_id).state is JobState.CANCELLED  # cancelling twice is fine
    ttl = jobs.store.client.ttl(jobs.store.job_key(job_id))
    assert 0 < ttl <= settings.job_ttl_s  # type: ignore[operator]


def test_cancelling_a_finished_job_is_refused(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "one", 1)
    job_id = submit_dir(jobs, input_root / "one")
    run_worker_burst(settings, FakeBackend())
    with pytest.raises(FailedPrecondition):
        jobs.cancel(job_id)
    with pytest.raises(JobNotFound):
        jobs.get("0" * 32)


def test_transient_backend_errors_are_retried(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "flaky", 4)
    job_id = submit_dir(jobs, input_root / "flaky")

    def unavailable_twice(call: int) -> None:
        if call <= 2:
            raise BackendUnavailable("TF Serving restarting")

    backend = FakeBackend(unavailable_twice)
    process = run_worker_burst(settings, backend)
    job = jobs.get(job_id)
    assert (job.state, job.done, job.failed) == (JobState.SUCCEEDED, 4, 0)
    assert process.metrics.retries._value.get() == 2


def test_a_pinned_version_that_does_not_exist_fails_the_job(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "pinned", 3)
    job_id = submit_dir(jobs, input_root / "pinned", model_version=7)
    run_worker_burst(settings, FakeBackend())
    job = jobs.get(job_id)
    assert job.state is JobState.FAILED and "version 7" in job.error


def test_finished_job_keys_all_expire(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "ttl", 5)
    job_id = jobs.submit(SubmitRequest(JobInput(paths=["ttl"]), client_job_id="ttl-job")
                         ).job.job_id
    run_worker_burst(settings, FakeBackend())
    client = jobs.store.client
    indexes = {jobs.store.all_jobs_key, jobs.store.owner_jobs_key(ANONYMOUS.identity)}
    ours = [key for key in client.scan_iter(f"{settings.key_prefix}:*")
            if key not in {jobs.store.active_key, jobs.store.stats_key, *indexes}]
    assert ours and all(0 < client.ttl(key) <= settings.job_ttl_s for key in ours)
    # the listing indexes hold every job of their owner: they live as long as the newest can
    assert all(0 < client.ttl(key) <= jobs.store.index_ttl_s for key in indexes)
    assert job_id not in jobs.store.active_jobs()
    sizes = [client.memory_usage(key) or 0 for key in ours]
    assert max(sizes) < 4096  # counts and states only: results stay in files


def test_a_chunk_that_always_fails_gives_up_after_its_attempts(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    from dermserve.worker.reaper import Reaper

    write_images(input_root / "poison", 5)  # chunks of 4 and 1
    job_id = submit_dir(jobs, input_root / "poison")

    def crash(call: int) -> None:
        raise RuntimeError("the runtime crashed")

    reaper = Reaper(jobs.store, jobs.queues, interval_s=1, grace_s=0)
    backend = FakeBackend(crash)
    for _ in range(3 * (settings.max_chunk_attempts + 1)):  # bounded: each pass is one attempt
        run_worker_burst(settings, backend)  # its own reaper may re-queue too; either is fine
        if jobs.get(job_id).state.terminal:
            break
        wait_until(lambda: not jobs.store.lease_held(job_id, 0), "the lease to go")
        reaper.reap_once()
    job = jobs.get(job_id)
    # Every image failed: the job did not succeed, and each image keeps its reason.
    assert (job.state, job.done, job.failed) == (JobState.FAILED, 5, 5)
    assert job.error.startswith("ALL_IMAGES_FAILED")
    reasons = {r.error.reason for r in all_results(jobs, job_id)}
    assert reasons == {"CHUNK_ATTEMPTS_EXHAUSTED"}
    assert "RuntimeError" in all_results(jobs, job_id)[0].error.message
    assert jobs.store.attempts(job_id) == {0: settings.max_chunk_attempts + 1,
                                           1: settings.max_chunk_attempts + 1}


def test_chunks_whose_queue_entries_were_lost_are_queued_again(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    from dermserve.worker.reaper import Reaper

    write_images(input_root / "lost", 9)
    job_id = submit_dir(jobs, input_root / "lost")
    for queue in jobs.queues.queues.values():
        queue.empty()  # as if Redis had lost its last writes
    assert sum(jobs.queues.depth().values()) == 0
    assert Reaper(jobs.store, jobs.queues, interval_s=1, grace_s=0).reap_once() == 3
    run_worker_burst(settings, FakeBackend())
    job = jobs.get(job_id)
    assert (job.state, job.done) == (JobState.SUCCEEDED, 9)
    assert [r.index for r in all_results(jobs, job_id)] == list(range(9))


def test_metrics_count_images_chunks_and_jobs(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    from prometheus_client import generate_latest

    paths = write_images(input_root / "m", 6)
    paths[0].write_bytes(b"junk")
    submit_dir(jobs, input_root / "m")
    text = generate_latest(run_worker_burst(settings, FakeBackend()).registry).decode()
    assert 'dermserve_batch_images_total{outcome="failed"} 1.0' in text
    classified = [line for line in text.splitlines()
                  if line.startswith("dermserve_batch_images_total{outcome=\"classified\"}")
                  or line.startswith("dermserve_batch_images_total{outcome=\"abstained\"}")]
    assert sum(float(line.split()[-1]) for line in classified) == 5
    assert 'dermserve_batch_chunks_total{outcome="LAST"} 1.0' in text
    assert "dermserve_batch_chunk_seconds_count 2.0" in text
    assert 'dermserve_batch_jobs_finished_total{state="SUCCEEDED"} 1.0' in text
    assert 'dermserve_batch_jobs{state="RUNNING"} 0.0' in text
    assert 'dermserve_batch_queue_depth{priority="normal"} 0.0' in text
    assert "dermserve_worker_busy 0.0" in text


def test_a_chunk_whose_inputs_vanished_fails_the_job_instead_of_looping(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    from dermserve.worker.reaper import Reaper

    write_images(input_root / "gone", 2)
    job_id = submit_dir(jobs, input_root / "gone")
    jobs.results.chunk_path(job_id, 0, ".input.json").unlink()  # the shared volume lost it
    reaper = Reaper(jobs.store, jobs.queues, interval_s=1, grace_s=0,
                    max_attempts=settings.max_chunk_attempts)
    for _ in range(3 * (settings.max_chunk_attempts + 2)):  # bounded
        run_worker_burst(settings, FakeBackend())
        if jobs.get(job_id).state.terminal:
            break
        wait_until(lambda: not jobs.store.lease_held(job_id, 0), "the lease to go")
        reaper.reap_once()
    job = jobs.get(job_id)
    assert job.state is JobState.FAILED
    assert job.error == "chunk 0 could not run (FileNotFoundError)"


def test_a_job_moves_on_when_its_version_is_unloaded_mid_job(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "reload", 8)  # two chunks of two batches
    job_id = submit_dir(jobs, input_root / "reload")

    def publish_version_2_before_the_second_chunk(call: int) -> None:
        if call == 3:
            backend.versions = (2,)  # TF Serving unloads 1 when 2 arrives (latest-only policy)

    backend = FakeBackend(publish_version_2_before_the_second_chunk)
    run_worker_burst(settings, backend)
    job = jobs.get(job_id)
    assert (job.state, job.done, job.failed) == (JobState.SUCCEEDED, 8, 0)
    assert job.resolved_version == 2
    versions = [r.model_version for r in all_results(jobs, job_id)]
    assert versions == [1, 1, 1, 1, 2, 2, 2, 2]  # each result names the version that made it
