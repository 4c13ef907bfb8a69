"""The web page driven in Debian's headless Chromium (Playwright with `executable_path`; nothing
downloads a browser): screenshots for the docs, and the page's load time.

    python -m devtools.bench.web_page screenshots --out docs/ [--prefix web]   (make screenshots)
    python -m devtools.bench.web_page bench --out bench-results/web-<UTC>.json   (make bench-web)

Each starts its own redis-server, front (embedded backend, the released model unless --model-base
says otherwise; hosting BatchJobs), worker and web server on free loopback ports, and stops them
at the end. The screenshots' batch job is the first 20 images of --images.

Page load: `--loads` fresh browser contexts (no cache) open the page; the Navigation Timing API
gives, per load, the time to the first byte, to DOMContentLoaded and to the load event. Upload to
result: `--uploads` times one image from `set_input_files` until its card shows the result (the
page's fetch, the web server, Explain/Classify over gRPC and the rendering), measured in this
process. The medians and the 95th percentiles go to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from playwright.sync_api import (
    Browser,
    FilePayload,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from dermserve.core import defaults as core_defaults
from dermserve.v1 import batch_jobs_pb2 as batch_pb
from dermserve.v1 import batch_jobs_pb2_grpc as batch_grpc
from devtools.stack.health import wait_until_serving
from devtools.stack.ports import free_ports
from devtools.stack.process import front_command, start, web_command, worker_command
from devtools.stack.redis import RedisServer

CHROMIUM = "chromium"  # Debian's package and binary name
START_TIMEOUT_S = 180.0  # seconds: TensorFlow's import and the model's load on busy CPUs
PAGE_TIMEOUT_MS = 60_000  # milliseconds a page wait may take, at most (a cold model)
VIEWPORT = ViewportSize(width=1280, height=900)  # pixels of the screenshots
DEFAULT_LOADS = 30  # page loads measured (a cold context each)
DEFAULT_UPLOADS = 10  # uploads timed
JOB_IMAGES = 20  # images of the batch job the jobs view shows; the first two are uploaded
SCREENSHOT_JOB = "ham10000-first-20"
TERMINAL_STATES = (batch_pb.BATCH_JOB_STATE_SUCCEEDED, batch_pb.BATCH_JOB_STATE_FAILED,
                   batch_pb.BATCH_JOB_STATE_CANCELLED)
REJECTED_EXAMPLE = FilePayload(name="notes.jpg", mimeType="image/jpeg",
                               buffer=b"Patient notes, not an image.\n" * 20)


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; fails clearly when `make install` has not installed it."""
    executable = shutil.which(CHROMIUM)
    if executable is None:
        raise RuntimeError("Debian's chromium is not installed: run `make install`")
    return playwright.chromium.launch(executable_path=executable, headless=True)


def wait_for_page(url: str, web: subprocess.Popen[bytes]) -> None:
    """Poll /healthz of a starting web server (a starting process has no other signal)."""
    until = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < until and web.poll() is None:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the web server did not start")


@dataclass(frozen=True)
class Served:
    """The page's URL and the front's address (to submit a batch job)."""

    url: str
    front: str


@contextmanager
def served_page(model_base: Path, model_name: str, images: Path) -> Iterator[Served]:
    """A redis-server, a front hosting BatchJobs, one worker and a web server, on free loopback
    ports, with `images` as the batch input root; yields the page's URL and the front."""
    front_port, web_port = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="dermserve-web-") as scratch:
        redis = RedisServer(Path(scratch) / "redis").start()
        batch = {"DERMSERVE_REDIS_URL": redis.url, "DERMSERVE_INPUT_ROOTS": str(images.resolve()),
                 "DERMSERVE_BATCH_OUTPUT_DIR": str(Path(scratch) / "results")}
        front = f"127.0.0.1:{front_port}"
        processes = [
            start(front_command(front, model_base, model_name, "--log-level", "WARNING"), batch),
            start(worker_command(model_base, model_name), batch),
            start(web_command(f"127.0.0.1:{web_port}", front), batch)]
        try:
            with grpc.insecure_channel(f"127.0.0.1:{front_port}") as channel:
                if not wait_until_serving(channel, START_TIMEOUT_S,
                                          lambda: processes[0].poll() is not None):
                    raise RuntimeError("the front did not become SERVING")
            url = f"http://127.0.0.1:{web_port}"
            wait_for_page(url, processes[2])
            yield Served(url, f"127.0.0.1:{front_port}")
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait()
            redis.stop()


def finished_job(front: str, images: Sequence[Path], job_id: str) -> None:
    """Submit `images` as a batch job named `job_id` and follow it to its end."""
    with grpc.insecure_channel(front) as channel:
        stub = batch_grpc.BatchJobsStub(channel)
        stub.SubmitBatchJob(batch_pb.SubmitBatchJobRequest(
            files=batch_pb.FileReferences(paths=[image.name for image in images]),
            client_job_id=job_id), timeout=30)
        for update in stub.WatchBatchJob(batch_pb.WatchBatchJobRequest(job_id=job_id),
                                         timeout=START_TIMEOUT_S):
            if update.job.state in TERMINAL_STATES:
                return
    raise RuntimeError(f"batch job {job_id} did not finish")


def upload(page: Page, url: str, files: Sequence[FilePayload]) -> None:
    page.goto(url)
    page.locator("#files").set_input_files(list(files))
    page.locator(".result[aria-busy=false]").nth(len(files) - 1).wait_for()


def payload(path: Path) -> FilePayload:
    return FilePayload(name=path.name, mimeType="image/jpeg", buffer=path.read_bytes())


def screenshots(browser: Browser, served: Served, images: Sequence[Path], out: Path,
                prefix: str) -> list[Path]:
    """The classify view with results and one rejection, a result card alone, the model card
    and the batch jobs view, as out/PREFIX-{classify,result,model,jobs}.png."""
    names = {view: out / f"{prefix}-{view}.png" for view in ("classify", "result", "model", "jobs")}
    url = served.url
    finished_job(served.front, images, SCREENSHOT_JOB)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    upload(page, url, [REJECTED_EXAMPLE, *(payload(image) for image in images[:2])])
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=names["classify"], full_page=True)
    page.locator(".result").nth(1).screenshot(path=names["result"])
    page.locator(".result:not(.rejected) .model-link").first.click()
    page.locator("#metrics tbody tr").first.wait_for()
    page.screenshot(path=names["model"], full_page=True)
    page.goto(url + "/jobs")
    page.get_by_label("Job id").fill(SCREENSHOT_JOB)
    page.get_by_role("button", name="Follow job").click()
    page.locator("#jobs tbody tr").first.wait_for()
    page.screenshot(path=names["jobs"])
    page.close()
    return list(names.values())


def navigation_timing(browser: Browser, url: str) -> dict[str, float]:
    """One cold load: milliseconds to the first byte, DOMContentLoaded and the load event."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(url, wait_until="load")
    timing: dict[str, float] = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return {ttfb_ms: n.responseStart - n.startTime,"
        " dom_content_loaded_ms: n.domContentLoadedEventEnd - n.startTime,"
        " load_ms: n.loadEventEnd - n.startTime}; }")
    context.close()
    return timing


def upload_seconds(browser: Browser, url: str, image: Path) -> float:
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    started = time.perf_counter()
    page.locator("#files").set_input_files([payload(image)])
    page.locator(".result[aria-busy=false]").wait_for()
    elapsed = time.perf_counter() - started
    page.close()
    return elapsed


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def bench(browser: Browser, url: str, image: Path, loads: int, uploads: int) -> dict[str, Any]:
    upload_seconds(browser, url, image)  # warm-up: the model's first call is not measured
    timings = [navigation_timing(browser, url) for _ in range(loads)]
    return {
        "page_load_ms": {key: spread([t[key] for t in timings]) for key in timings[0]},
        "upload_to_result_ms": spread([1000 * upload_seconds(browser, url, image)
                                       for _ in range(uploads)]),
    }


def run(args: argparse.Namespace) -> None:
    images = sorted(args.images.glob("*.jpg"))[:JOB_IMAGES]
    if not images:
        raise SystemExit(f"no JPEG images in {args.images}")
    with served_page(args.model_base, args.model_name, args.images) as served, \
            sync_playwright() as driver:
        browser = launch_chromium(driver)
        try:
            if args.command == "screenshots":
                for path in screenshots(browser, served, images, args.out, args.prefix):
                    print(path)
                return
            report = {"created_utc": datetime.now(UTC).isoformat(), "host": platform.node(),
                      "cpus": os.cpu_count(), "browser": f"chromium {browser.version}",
                      "model_base": str(args.model_base), "image": images[0].name,
                      **bench(browser, served.url, images[0], args.loads, args.uploads)}
        finally:
            browser.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.web_page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("screenshots", "bench"))
    parser.add_argument("--out", type=Path, required=True,
                        help="screenshots: a directory; bench: the JSON file")
    parser.add_argument("--model-base", type=Path, default=Path(core_defaults.DEFAULT_MODEL_BASE))
    parser.add_argument("--model-name", default=core_defaults.DEFAULT_MODEL_NAME)
    parser.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"),
                        help="a directory of JPEGs: the first two are uploaded")
    parser.add_argument("--prefix", default="web", help="screenshots: the files' name prefix")
    parser.add_argument("--loads", type=int, default=DEFAULT_LOADS)
    parser.add_argument("--uploads", type=int, default=DEFAULT_UPLOADS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
