"""Batch errors that say what to do (issue 30): a refusal names the input roots and the CLI the
path it sent; a manifest is recognised by its name or header wherever it is given; a job whose
every image failed ends FAILED (ALL_IMAGES_FAILED) with each reason kept, a partly failed one
SUCCEEDED with failed_images in the CLI's summary; `batch status | head` ends quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.cli.batch import main as batch_main
from dermserve.core.errors import InvalidRequest
from dermserve.service.batch_jobs import add_batch_jobs_service
from dermserve.service.status import ErrorMappingInterceptor
from dermserve.worker.settings import WorkerSettings
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images


@pytest.fixture
def target(jobs: JobService) -> Iterator[str]:
    """The BatchJobs API on a real gRPC server, as the front hosts it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ErrorMappingInterceptor()])
    add_batch_jobs_service(server, jobs)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def submit(jobs: JobService, *paths: Path) -> str:
    return jobs.submit(SubmitRequest(JobInput(paths=[str(p) for p in paths]))).job.job_id


def broken_folder(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"broken_{index}.jpg").write_bytes(b"\xff\xd8\xff not a JPEG at all")
    return folder


def test_a_manifest_outside_the_roots_names_its_path_and_the_roots(
        target: str, input_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "elsewhere" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path\na.jpg\n")
    assert batch_main(["submit", str(manifest), "--target", target, "--no-wait"]) == 1
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["reason"] == "REFERENCE_OUTSIDE_INPUT_ROOTS"
    assert error["path"] == str(manifest.resolve())
    assert str(input_root.resolve()) in error["message"]


def test_a_reference_outside_the_roots_is_named_by_the_cli(
        target: str, input_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(input_root / "ok", 1)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    assert batch_main(["submit", str(input_root / "ok"), str(outside), "--target", target,
                       "--no-wait"]) == 1
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["path"] == str(outside.resolve())
    assert "reference 1 of the request" in error["message"]


@pytest.mark.parametrize("name, text", [
    ("list.csv", "path,note\nm/img_0000.jpg,x\nm/img_0001.jpg,y\n"),
    ("list.txt", "m/img_0000.jpg\nm/img_0001.jpg\n"),
    ("list", "Path\nm/img_0000.jpg\nm/img_0001.jpg\n"),  # no suffix: known by its header
])
def test_a_manifest_next_to_a_folder_lists_images(
        jobs: JobService, input_root: Path, name: str, text: str) -> None:
    write_images(input_root / "m", 2)
    write_images(input_root / "folder", 3)
    (input_root / name).write_text(text)
    record = jobs.get(submit(jobs, input_root / "folder", input_root / name))
    assert record.total == 5  # three from the folder, two from the manifest, not the CSV itself


def test_a_manifest_inside_a_manifest_is_not_followed(jobs: JobService, input_root: Path) -> None:
    write_images(input_root / "m", 1)
    (input_root / "inner.csv").write_text("m/img_0000.jpg\n")
    (input_root / "outer.csv").write_text("inner.csv\nm/img_0000.jpg\n")
    record = jobs.get(submit(jobs, input_root / "outer.csv", input_root / "m"))
    assert record.total == 3  # outer lists inner.csv as an image (it fails), and the image


def test_every_image_failing_fails_the_job_and_keeps_the_reasons(
        target: str, jobs: JobService, settings: WorkerSettings, input_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = broken_folder(input_root / "broken")
    assert batch_main(["submit", str(folder), "--target", target, "--no-wait"]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    run_worker_burst(settings, FakeBackend())
    record = jobs.get(job_id)
    assert record.state is JobState.FAILED and record.error.startswith("ALL_IMAGES_FAILED")
    results = jobs.list_results(job_id).results
    assert [r.error.reason for r in results if r.error] == ["CORRUPT_IMAGE"] * 2
    assert batch_main(["status", job_id, "--target", target]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "BATCH_JOB_STATE_FAILED" and shown["results_jsonl_path"]


def test_a_partly_failed_job_succeeds_with_failed_images_in_the_summary(
        target: str, settings: WorkerSettings, input_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = input_root / "mixed"
    write_images(folder, 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    assert batch_main(["submit", str(folder), "--target", target, "--no-wait"]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    run_worker_burst(settings, FakeBackend())
    assert batch_main(["watch", job_id, "--target", target]) == 0
    summary = capsys.readouterr().err.splitlines()[-1]
    assert summary.startswith(f"job {job_id} SUCCEEDED: 3 images, 2 classified")
    assert "failed_images 1" in summary and f"dermserve batch results {job_id}" in summary


def test_status_into_a_closed_pipe_ends_quietly(
        target: str, jobs: JobService, input_root: Path) -> None:
    """`dermserve batch status JOB | head -5` once head has gone: the pipe's only reader is
    closed before the command writes, so its write fails every time."""
    write_images(input_root / "few", 1)
    job_id = submit(jobs, input_root / "few")
    process = subprocess.Popen([sys.executable, "-m", "dermserve.cli", "batch", "status", job_id,
                                "--target", target], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141  # 128 + SIGPIPE, as `cat` would say
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_the_refusal_message_never_names_the_path(jobs: JobService, tmp_path: Path) -> None:
    secret = tmp_path / "MRN4711_Doe_Jane.csv"
    secret.write_text("a.jpg\n")
    with pytest.raises(InvalidRequest) as caught:
        jobs.submit(SubmitRequest(JobInput(manifest_path=str(secret))))
    error = caught.value
    assert "MRN4711" not in error.client_message and "MRN4711" not in str(error)
    assert "the input roots: " in error.client_message  # the client's hint names them
    assert "the input roots: " not in str(error)  # what is logged does not
