"""BatchJobs over a real gRPC server on 127.0.0.1:0, with the front's error-mapping interceptor:
status codes are asserted as a client sees them."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dermserve.batch.jobs import JobService
from dermserve.protocol.wire import REASON_METADATA_KEY
from dermserve.service.batch_jobs import add_batch_jobs_service, batch_jobs_service
from dermserve.service.status import ErrorMappingInterceptor
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.worker.settings import WorkerSettings
from devtools.stack.redis import RedisServer
from tests.worker.conftest import FakeBackend, jpeg_bytes, run_worker_burst, write_images


@pytest.fixture
def stub(jobs: JobService) -> Iterator[pb_grpc.BatchJobsStub]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ErrorMappingInterceptor()])
    add_batch_jobs_service(server, jobs)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.BatchJobsStub(channel)
    channel.close()
    server.stop(grace=None)


def rejected(stub: pb_grpc.BatchJobsStub, request: pb.SubmitBatchJobRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitBatchJob(request, timeout=10)
    return caught.value


def reason(error: grpc.RpcError) -> str:
    pairs = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    return next((value for key, value in pairs if key == REASON_METADATA_KEY), "")


def files(*paths: str) -> pb.SubmitBatchJobRequest:
    return pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=list(paths)))


def test_references_outside_the_input_roots_are_invalid_argument(
        stub: pb_grpc.BatchJobsStub, input_root: Path, tmp_path: Path) -> None:
    write_images(input_root / "ok", 1)
    outside = tmp_path / "elsewhere"
    write_images(outside, 1)
    (input_root / "escape").symlink_to(outside, target_is_directory=True)
    (input_root / "link.jpg").symlink_to(outside / "img_0000.jpg")
    manifest = input_root / "list.csv"
    manifest.write_text("path\nok/img_0000.jpg\n../elsewhere/img_0000.jpg\n")
    attempts = [
        files("../elsewhere/img_0000.jpg"),
        files("ok/../../elsewhere"),
        files(str(outside / "img_0000.jpg")),
        files("/etc/passwd"),
        files("escape/img_0000.jpg"),
        files("link.jpg"),
        files("ok/img_0000.jpg", "escape"),
        pb.SubmitBatchJobRequest(manifest=pb.Manifest(path=str(manifest))),
        pb.SubmitBatchJobRequest(manifest=pb.Manifest(path="../elsewhere/list.csv")),
        pb.SubmitBatchJobRequest(manifest=pb.Manifest(csv="/etc/hostname\n")),
    ]
    for request in attempts:
        error = rejected(stub, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert reason(error) == "REFERENCE_OUTSIDE_INPUT_ROOTS", request
        if str(outside) not in str(request):  # a symlink's target never leaks into the error
            assert str(outside) not in (error.details() or "")


def test_a_symlink_inside_a_directory_reference_is_skipped_not_followed_out(
        stub: pb_grpc.BatchJobsStub, input_root: Path, tmp_path: Path) -> None:
    write_images(input_root / "dir", 2)
    outside = tmp_path / "secret"
    write_images(outside, 1)
    (input_root / "dir" / "sneaky.jpg").symlink_to(outside / "img_0000.jpg")
    response = stub.SubmitBatchJob(files("dir"), timeout=10)
    assert response.job.total_images == 2


def test_oversize_jobs_are_resource_exhausted(
        stub: pb_grpc.BatchJobsStub, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "many", settings.max_images_per_job + 1)
    error = rejected(stub, files("many"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "TOO_MANY_IMAGES"

    too_many = [pb.InlineImage(name=str(i), data=jpeg_bytes(i))
                for i in range(settings.max_inline_images + 1)]
    error = rejected(stub, pb.SubmitBatchJobRequest(inline=pb.InlineImages(images=too_many)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "TOO_MANY_INLINE_IMAGES"

    huge = [pb.InlineImage(name="big", data=b"\xff\xd8\xff" + bytes(settings.max_inline_bytes))]
    error = rejected(stub, pb.SubmitBatchJobRequest(inline=pb.InlineImages(images=huge)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "INLINE_IMAGES_TOO_LARGE"
    spooled = list(settings.batch_output_dir.glob("*")) if settings.batch_output_dir.exists() \
        else []
    assert spooled == []  # a refused job leaves no files behind


def test_other_bad_requests_are_invalid_argument(stub: pb_grpc.BatchJobsStub) -> None:
    for request, why in [(pb.SubmitBatchJobRequest(), "NO_INPUT"),
                         (pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=["x"]),
                                                   client_job_id="no spaces"),
                          "BAD_CLIENT_JOB_ID")]:
        error = rejected(stub, request)
        assert (error.code(), reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, why)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBatchJob(pb.GetBatchJobRequest(job_id="0" * 32), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBatchJob(pb.GetBatchJobRequest(job_id="../../etc"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_submit_watch_and_page_through_results(
        stub: pb_grpc.BatchJobsStub, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "ham", 9)
    (input_root / "ham" / "img_0003.jpg").write_bytes(b"not an image")
    submitted = stub.SubmitBatchJob(pb.SubmitBatchJobRequest(
        manifest=pb.Manifest(csv="path,lesion_id\n" + "".join(
            f"ham/img_{i:04d}.jpg,L{i}\n" for i in range(9))),
        client_job_id="screening-7", priority=pb.BATCH_JOB_PRIORITY_HIGH), timeout=10)
    job_id = submitted.job.job_id
    assert submitted.created and submitted.job.state == pb.BATCH_JOB_STATE_QUEUED
    assert submitted.job.HasField("create_time") and submitted.job.eta_seconds == -1
    again = stub.SubmitBatchJob(pb.SubmitBatchJobRequest(
        files=pb.FileReferences(paths=["ham"]), client_job_id="screening-7"), timeout=10)
    assert not again.created and again.job.job_id == job_id

    run_worker_burst(settings, FakeBackend())

    updates = list(stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job_id), timeout=10))
    final = updates[-1].job
    assert final.state == pb.BATCH_JOB_STATE_SUCCEEDED
    assert (final.total_images, final.done_images, final.failed_images) == (9, 9, 1)
    assert final.model.version == 1 and final.HasField("finish_time")
    assert Path(final.results_jsonl_path).is_file() and Path(final.results_csv_path).is_file()
    # the name the client chose works wherever the server's id does
    named = stub.GetBatchJob(pb.GetBatchJobRequest(job_id="screening-7"), timeout=10).job
    assert named.job_id == job_id and named.client_job_id == "screening-7"

    seen, token = [], ""
    while True:
        page = stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
            job_id=job_id, page_size=4, page_token=token), timeout=10)
        assert len(page.results) <= 4
        seen.extend(page.results)
        token = page.next_page_token
        if not token:
            break
    assert [r.index for r in seen] == list(range(9))
    assert seen[0].reference == "ham/img_0000.jpg" and len(seen[0].probabilities) == 7
    assert seen[3].error.reason == "UNSUPPORTED_FORMAT" and not seen[3].probabilities
    assert seen[0].model.version == 1

    with pytest.raises(grpc.RpcError) as caught:
        stub.CancelBatchJob(pb.CancelBatchJobRequest(job_id=job_id), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_watch_streams_until_cancelled(stub: pb_grpc.BatchJobsStub, input_root: Path) -> None:
    write_images(input_root / "w", 3)
    job_id = stub.SubmitBatchJob(files("w"), timeout=10).job.job_id
    stream = stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job_id), timeout=20)
    first = next(stream)
    assert first.job.state == pb.BATCH_JOB_STATE_QUEUED
    cancelled = stub.CancelBatchJob(pb.CancelBatchJobRequest(job_id=job_id), timeout=10)
    assert cancelled.job.state == pb.BATCH_JOB_STATE_CANCELLED
    rest = list(stream)
    assert rest[-1].job.state == pb.BATCH_JOB_STATE_CANCELLED


@pytest.fixture
def target(jobs: JobService) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ErrorMappingInterceptor()])
    name, add = batch_jobs_service(jobs)  # the form service.server.serve(extra_services=) takes
    assert name == "dermserve.v1.BatchJobs"
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_cli_submit_watch_results_and_cancel(
        target: str, settings: WorkerSettings, input_root: Path,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from dermserve.cli.batch import main

    write_images(input_root / "folder", 6)
    assert main(["submit", str(input_root / "folder"), "--no-wait", "--job-id", "cli-1",
                 "--target", target]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]

    run_worker_burst(settings, FakeBackend())

    assert main(["watch", job_id, "--target", target]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["state"] == "BATCH_JOB_STATE_SUCCEEDED"
    assert "6/6 100%" in captured.err
    assert main(["results", job_id, "--format", "csv", "--output", str(tmp_path / "r.csv"),
                 "--target", target]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [int(row["index"]) for row in rows] == list(range(6))
    assert main(["results", job_id, "--target", target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["reference"].endswith("img_0000.jpg")
    assert main(["cancel", job_id, "--target", target]) == 1
    assert json.loads(capsys.readouterr().err)["reason"] == "JOB_ALREADY_FINISHED"

    some = [str(input_root / "folder" / f"img_{i:04d}.jpg") for i in range(3)]
    assert main(["submit", *some, "--inline", "--no-wait", "--target", target]) == 0
    inline = json.loads(capsys.readouterr().out)
    assert inline["total_images"] == "3" and inline["job_id"] != job_id
    assert main(["submit", str(input_root / "folder"), "--inline", "--target", target]) == 1
    assert json.loads(capsys.readouterr().err)["code"] == "RESOURCE_EXHAUSTED"


def test_the_cli_csv_is_the_job_csv(target: str, settings: WorkerSettings, input_root: Path,
                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """One CSV layout: `dermserve batch results --format csv` writes the job's results.csv, error
    rows and per-class columns included (it used to write a second layout of its own)."""
    from dermserve.cli.batch import main

    write_images(input_root / "mixed", 3)
    (input_root / "mixed" / "img_0003.jpg").write_bytes(b"=HYPERLINK(not a jpeg)")
    assert main(["submit", str(input_root / "mixed"), "--no-wait", "--target", target]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    run_worker_burst(settings, FakeBackend())
    assert main(["results", job_id, "--format", "csv", "--output", str(tmp_path / "cli.csv"),
                 "--target", target]) == 0
    job_csv = settings.batch_output_dir / job_id / "results.csv"
    assert (tmp_path / "cli.csv").read_bytes() == job_csv.read_bytes()
    rows = list(csv.DictReader((tmp_path / "cli.csv").open(newline="")))
    assert [row["status"] for row in rows] == ["classified"] * 3 + ["error"]
    assert rows[3]["error_reason"] == "UNSUPPORTED_FORMAT" and "p_mel" in rows[0]


def test_redis_down_is_unavailable_and_quick(
        stub: pb_grpc.BatchJobsStub, redis_server: RedisServer, input_root: Path) -> None:
    write_images(input_root / "r", 1)
    job_id = stub.SubmitBatchJob(files("r"), timeout=10).job.job_id
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job_id), timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(caught.value) == "JOB_STORE_UNAVAILABLE"
    assert time.monotonic() - started < 10
    redis_server.start()
    assert stub.GetBatchJob(pb.GetBatchJobRequest(job_id=job_id), timeout=20).job.job_id == job_id


def test_cli_results_of_dicom_files_as_fhir_ndjson(
        target: str, settings: WorkerSettings, input_root: Path,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`dermserve batch results --format ndjson`: the job's results as FHIR resources, each line
    validated by its R4B model; the JSONL listing carries each image's DICOM UIDs."""
    from fhir.resources.R4B import get_fhir_model_class

    from dermserve.cli.batch import main
    from tests.dicom_files import ham_dicom

    (input_root / "dicom").mkdir()
    for index, variant in enumerate(("uncompressed-rgb", "jpeg-ybr422")):
        (input_root / "dicom" / f"{index}.dcm").write_bytes(ham_dicom(variant))
    assert main(["submit", str(input_root / "dicom"), "--no-wait", "--target", target]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    run_worker_burst(settings, FakeBackend())
    assert main(["results", job_id, "--target", target]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(item["dicom"]["sop_instance_uid"] for item in listed) and len(listed) == 2
    output = tmp_path / "results.ndjson"
    assert main(["results", job_id, "--format", "ndjson", "--output", str(output),
                 "--target", target]) == 0
    lines = output.read_text(encoding="utf-8").splitlines()
    kinds = [get_fhir_model_class(json.loads(line)["resourceType"]).model_validate_json(line)
             .get_resource_type() for line in lines]
    assert kinds.count("DiagnosticReport") == 2 and kinds.count("ImagingStudy") == 2
