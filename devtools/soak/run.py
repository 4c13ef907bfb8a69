"""`make soak` (`python -m devtools.soak`): the whole local stack under mixed load while faults hit
it, on loopback, for a bounded time; a JSON report and a PNG plot come out.

The stack is `make run`'s own launcher and supervisor (devtools/stack/launcher.py) on free ports, on
a copy of the model base in a temporary directory. The load: unary Classify at --concurrency,
--streams ClassifyStreams, ListModels every second, and one batch job of --job-images HAM10000
images submitted at the start. The faults, in order, at fixed fractions of --duration-s (each
waits for the stack to recover from the previous one):

    15%  SIGKILL the worker (the supervisor restarts it; its chunks are re-queued)
    25%  restart Redis (SIGTERM; the supervisor restarts it; the AOF keeps the job)
    40%  publish a new model version (a copy of the served one, renamed into place)
    55%  remove the old model version (loaded: it unloads under traffic)
    75%  restart the front (SIGTERM: it drains and exits; the supervisor restarts it)

The report (devtools/soak/report.py) gives calls by method and status code, the unary error
rate outside the front's own restart window (from its SIGTERM until the clients' channel says
SERVING again; target zero), p50/p99 per 10 s, RSS of every process after warm-up and at the end
(target: growth under 100 MB), the batch job checked for every image exactly once, and when each
fault began and healed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dermserve.core import defaults as core_defaults
from dermserve.v1 import batch_jobs_pb2_grpc as batch_grpc
from devtools.soak import job as soak_job
from devtools.soak.chaos import Chaos, ChaosEvent, versions_on_disk
from devtools.soak.load import CallLog, Load, RssSampler, open_channel
from devtools.soak.report import build_report, plot
from devtools.stack.launched import LaunchedStack, StackLayout

log = logging.getLogger("dermserve.soak")

DEFAULT_DURATION_S = 600.0  # seconds of load: `make soak`'s SOAK_S
SCHEDULE = (("kill_worker", 0.15), ("restart_redis", 0.25), ("publish_version", 0.40),
            ("remove_old_version", 0.55), ("restart_front", 0.75))
"""Each fault and the fraction of the run at which it is due. The batch job's faults come first,
while the job surely runs: with the frozen graph all of HAM10000 finished before a worker
SIGKILL at 45% (bench-results/NOTES.md, soak). Then a release
(publish, then remove the old version) before the front's restart, so that the first front's RSS
window and the replacement worker's each span a whole swap."""
WARMUP_FRACTION = 0.10  # of the run: RSS "start" is the first sample after it, before any fault
DEFAULT_CONCURRENCY = 16  # unary Classify calls in flight
DEFAULT_STREAMS = 1  # ClassifyStreams open at once, one after the other on each
DEFAULT_JOB_IMAGES = 0
"""HAM10000 images in the batch job; 0 takes them all (10,015), as the issue asks, so that the job
is still running at the worker's SIGKILL (15%) and Redis' restart (25%). On two cores shared with
other work the job may outlast a 10-minute soak (bench-results/NOTES.md, soak), and the
report says when it finished (`finished_within_soak`)."""
UNARY_IMAGES = 64  # distinct images the unary and stream load cycle through
READY_TIMEOUT_S = 300.0  # seconds for the stack to say SERVING (two TF imports, model loads)


def copy_models(source: Path, model_name: str, workdir: Path) -> Path:
    """The released models' latest version, copied: the soak publishes a version and removes one,
    never in the released models. One version only, so the release it plays is like for like
    (the copy of that version is published next to it, then the old one retired), and the RSS
    at the end compares the same model loaded, not a smaller one swapped for a larger."""
    latest = versions_on_disk(source / model_name)[-1]
    base = workdir / "models"
    shutil.copytree(source / model_name / str(latest), base / model_name / str(latest))
    return base


def run_faults(chaos: Chaos, events: Sequence[ChaosEvent], log_: CallLog) -> None:
    for event in events:
        time.sleep(max(0.0, event.due_s - log_.now()))
        log.info("fault %s at %.0f s", event.name, log_.now())
        chaos.run(event)
        log.info("fault %s healed: %s", event.name, event.recovered_s is not None)


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_base = copy_models(args.model_base, args.model_name, workdir)
    images = sorted(args.images_dir.glob("*.jpg"))
    job_images = images[:args.job_images or None]
    references = [f"{args.images_dir.name}/{path.name}" for path in job_images]
    layout = StackLayout.on_free_ports(workdir / "stack", model_base, [args.images_dir.parent])
    with (workdir / "stack.log").open("wb") as stack_log:
        stack = LaunchedStack(layout, stack_log)
        try:
            if not stack.wait_until_serving(READY_TIMEOUT_S):
                raise SystemExit(f"the stack did not start; see {workdir / 'stack.log'}")
            return under_load(args, stack, model_base, images, references)
        finally:
            log.info("launcher exited with %d", stack.stop())


def under_load(args: argparse.Namespace, stack: LaunchedStack, model_base: Path,
               images: Sequence[Path], references: Sequence[str]) -> dict[str, Any]:
    origin_wall, calls = time.time(), CallLog(time.monotonic())
    load_at_start = os.getloadavg()
    load = Load(stack.layout.target, [p.read_bytes() for p in images[:UNARY_IMAGES]], calls,
                args.concurrency, args.streams)
    sampler = RssSampler(lambda: {**stack.pids(), "launcher": stack.process.pid,
                                  "soak": os.getpid()}, calls)
    sampler.start()
    load.start()
    jobs_channel = open_channel(stack.layout.target)
    jobs = batch_grpc.BatchJobsStub(jobs_channel)
    job_id = soak_job.submit(jobs, references)
    events = [ChaosEvent(name, fraction, fraction * args.duration_s) for name, fraction in SCHEDULE]
    chaos = Chaos(stack, model_base / args.model_name, calls, load.unary_channel,
                  lambda: soak_job.progress(jobs, job_id))
    run_faults(chaos, events, calls)
    time.sleep(max(0.0, args.duration_s - calls.now()))
    duration = calls.now()
    sampler.stop()
    load.stop()
    job = soak_job.check(jobs, job_id, references, args.job_timeout_s, origin_wall)
    job["finished_within_soak"] = job.get("finished_at_s", float("inf")) <= duration
    jobs_channel.close()
    meta = {"benchmark": "soak", "started_utc": datetime.fromtimestamp(origin_wall, UTC)
            .isoformat(timespec="seconds"), "duration_s": round(duration, 1),
            "model": f"{args.model_base}/{args.model_name}", "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "load": {"unary_concurrency": args.concurrency, "streams": args.streams,
                     "list_models_interval_s": 1.0}}
    return build_report(calls.snapshot(), events, sampler.samples, job,
                        WARMUP_FRACTION * args.duration_s, meta)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    parser.add_argument("--model-base", type=Path, default=Path(core_defaults.DEFAULT_MODEL_BASE))
    parser.add_argument("--model-name", default=core_defaults.DEFAULT_MODEL_NAME)
    parser.add_argument("--images-dir", type=Path,
                        default=Path("../shared/data/ham10000/images"),
                        help="JPEGs for the load and the batch job (their folder's parent is "
                             "the stack's input root)")
    parser.add_argument("--job-images", type=int, default=DEFAULT_JOB_IMAGES,
                        help="images in the batch job (0: every image in --images-dir)")
    parser.add_argument("--job-timeout-s", type=float, default=DEFAULT_DURATION_S,
                        help="how long to wait for the batch job after the load ends")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS)
    parser.add_argument("--workdir", type=Path,
                        help="keep the stack's state and log here (default: a temporary "
                             "directory, removed at the end)")
    return parser.parse_args(list(argv))


def write_outputs(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["started_utc"].replace("-", "").replace(":", "").replace("+0000", "Z")
    path = out_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, path.with_suffix(".png"))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s soak %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dermserve-soak-"))
    try:
        report = soak(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    path = write_outputs(report, args.out_dir)
    print(json.dumps({key: report[key] for key in ("unary", "batch_job", "rss_mb", "targets")},
                     indent=2))
    print(f"report: {path}\nplot:   {path.with_suffix('.png')}")
    return 0  # a missed target is a finding in the report, not a failed run


if __name__ == "__main__":
    sys.exit(main())
