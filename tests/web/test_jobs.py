"""The batch jobs view against the real front hosting BatchJobs on a real redis-server, with an
in-process worker: the page identity's jobs are listed without typing their ids (ListBatchJobs),
newest first, older ones a click away; a followed job shows its progress and state; results
download as JSON Lines, one line per image."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from playwright.sync_api import Download, Locator, Page, expect

from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.web.defaults import JOBS_PAGE_SIZE
from dermserve.worker.settings import WorkerSettings
from tests.web.conftest import running_web
from tests.web.test_page import accessible_controls
from tests.worker.conftest import (  # noqa: F401 (fixtures)
    FakeBackend,
    input_root,
    redis_server,
    run_worker_burst,
    settings,
    write_images,
)
from tests.worker.test_front import batch_services

IMAGES = 6


def test_a_finished_job_shows_its_progress_and_downloads_its_results(
        page: Page, settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:  # noqa: F811
    write_images(input_root / "clinic", IMAGES)
    backend = FakeBackend()
    with running_web(backend, batch_services(settings)) as web:
        with grpc.insecure_channel(f"127.0.0.1:{web.front_port}") as channel:
            stub = pb_grpc.BatchJobsStub(channel)
            stub.SubmitBatchJob(pb.SubmitBatchJobRequest(
                files=pb.FileReferences(paths=["clinic"]), client_job_id="clinic-1"), timeout=10)
        run_worker_burst(settings, backend)
        page.goto(web.url + "/jobs")
        page.get_by_label("Job id").fill("clinic-1")
        page.get_by_role("button", name="Follow job").click()
        row = page.locator("#jobs tbody tr")
        expect(row).to_contain_text("succeeded")
        expect(row).to_contain_text(f"{IMAGES} / {IMAGES}")
        # the list above shows the same job too
        download = finished_and_downloaded(page, page.locator("#jobs"), "clinic-1",
                                           tmp_path / "results.jsonl")
    path = tmp_path / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["index"] for line in lines] == [str(i) for i in range(IMAGES)]
    assert all(len(line["probabilities"]) == 7 for line in lines)
    assert download.suggested_filename == "clinic-1-results.jsonl"


def finished_and_downloaded(page: Page, table: Locator, name: str, path: Path) -> Download:
    """Check that `table` shows job `name` done, download its results to `path`."""
    expect(table.get_by_role("progressbar", name=f"Progress of job {name}")
           ).to_have_js_property("value", IMAGES)
    with page.expect_download() as download:
        table.get_by_role("link", name=f"Download results of {name} (JSON Lines)").click()
    download.value.save_as(path)
    return download.value


def test_the_followed_jobs_survive_a_reload_in_this_browser_only(
        page: Page, settings: WorkerSettings) -> None:  # noqa: F811
    with running_web(FakeBackend(), batch_services(settings)) as web:
        page.goto(web.url + "/jobs")
        page.get_by_label("Job id").fill("not-submitted")
        page.get_by_role("button", name="Follow job").click()
        row = page.locator("#jobs tbody tr")
        expect(row).to_contain_text("JOB_NOT_FOUND")
        page.reload()
        expect(row).to_contain_text("not-submitted")
        page.get_by_role("button", name="Remove not-submitted").click()
        expect(row).to_have_count(0)


def submit(front_port: int, *requests: pb.SubmitBatchJobRequest) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{front_port}") as channel:
        stub = pb_grpc.BatchJobsStub(channel)
        return [stub.SubmitBatchJob(request, timeout=10).job.job_id for request in requests]


def test_a_submitted_job_is_listed_without_typing_its_id(
        page: Page, settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:  # noqa: F811
    write_images(input_root / "ward", IMAGES)
    backend = FakeBackend()
    with running_web(backend, batch_services(settings)) as web:
        submit(web.front_port, pb.SubmitBatchJobRequest(
            files=pb.FileReferences(paths=["ward"]), client_job_id="ward-older"),
            pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=["ward"])))
        page.goto(web.url + "/jobs")
        rows = page.locator("#my-jobs tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(1)).to_contain_text("ward-older")  # newest first: the unnamed job on top
        expect(rows.nth(0)).to_contain_text("queued")
        assert [control for control in accessible_controls(page) if not control[1].strip()] == []
        expect(page.locator("#jobs tbody tr")).to_have_count(0)  # nothing was typed or followed
        run_worker_burst(settings, backend)
        expect(rows.nth(1)).to_contain_text("succeeded")  # it refreshes while a job runs
        finished_and_downloaded(page, page.locator("#my-jobs"), "ward-older",
                                tmp_path / "listed.jsonl")
    assert len((tmp_path / "listed.jsonl").read_text().splitlines()) == IMAGES


def test_older_jobs_are_a_click_away(page: Page, settings: WorkerSettings,  # noqa: F811
                                     input_root: Path) -> None:  # noqa: F811
    write_images(input_root / "one", 1)
    request = pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=["one"]))
    with running_web(FakeBackend(), batch_services(settings)) as web:
        ids = submit(web.front_port, *[request] * (JOBS_PAGE_SIZE + 1))
        page.goto(web.url + "/jobs")
        rows = page.locator("#my-jobs tbody tr")
        expect(rows).to_have_count(JOBS_PAGE_SIZE)
        expect(rows.first).to_contain_text(ids[-1])
        page.get_by_role("button", name="Show older jobs").click()
        expect(rows).to_have_count(JOBS_PAGE_SIZE + 1)
        expect(rows.last).to_contain_text(ids[0])
        expect(page.get_by_role("button", name="Show older jobs")).to_be_hidden()
