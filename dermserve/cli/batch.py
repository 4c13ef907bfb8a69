"""`dermserve batch ...`: submit, follow, collect and cancel batch jobs over gRPC.

    dermserve batch submit DIR_OR_MANIFEST... [--inline] [--job-id ID] [--version N | --label L]
                           [--priority low|normal|high] [--no-wait]
    dermserve batch status JOB_ID
    dermserve batch watch JOB_ID
    dermserve batch results JOB_ID [--format jsonl|csv|ndjson] [--output FILE]
    dermserve batch cancel JOB_ID
    dermserve batch list [--state QUEUED|RUNNING|SUCCEEDED|FAILED|CANCELLED] [--limit N]

A directory or image file is sent as a reference (the server reads it from its input roots); a
manifest (a `.csv` or `.txt` file, or a file whose header has a `path` column) lists images, one
a row, resolved against the manifest's own folder, wherever it is given; `--inline` sends the
images themselves instead. `submit` shows a
progress bar on stderr until the job ends, then prints the job as JSON on stdout. `list` prints
your own jobs (an operator token: everyone's), newest first, one JSON object a line. Exit status: 0
when the job (or the call) succeeded, 1 otherwise. cli/main.py registers these commands
through `add_batch_commands`; `python -m dermserve.cli.batch` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from dermserve.batch.defaults import (
    DEFAULT_JOBS_PAGE_SIZE,
    IMAGE_SUFFIXES,
    MANIFEST_SUFFIXES,
    MAX_JOBS_PAGE_SIZE,
    MAX_PAGE_SIZE,
)
from dermserve.batch.references import manifest_paths
from dermserve.batch.results import EXPORTERS, ResultExporter, labels_of
from dermserve.client.connection import (
    add_connection_arguments,
    call_metadata,
    error_entry,
    open_channel,
)
from dermserve.core.numbers import ascii_natural
from dermserve.protocol.results import image_result
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc

EXPORTERS_BY_NAME: dict[str, ResultExporter] = {
    exporter.name: exporter for exporter in EXPORTERS if exporter.name != "jsonl"}
"""The job's exporters the client runs on the listed results (jsonl prints the messages)."""

PROGRESS_WIDTH = 30  # characters of the progress bar
STATES = [name.removeprefix("BATCH_JOB_STATE_") for name in pb.BatchJobState.keys()
          if name != "BATCH_JOB_STATE_UNSPECIFIED"]
TERMINAL = {pb.BATCH_JOB_STATE_SUCCEEDED, pb.BATCH_JOB_STATE_FAILED,
            pb.BATCH_JOB_STATE_CANCELLED}


SUBMIT_DESCRIPTION = """\
Submit a batch job. The server reads the images itself, so every folder, image and manifest must
lie inside the server's input roots (`make run`: ../shared/data/ham10000 and var/batch-input/;
a refusal names them). A manifest is a .csv or .txt file (or any file whose first line has a
`path` column): one image path a row, in its `path` column or else its first; relative paths
resolve against the manifest's own folder. --inline sends the images in the request instead,
from anywhere on this machine.

The summary line on stderr counts classified, abstained and failed images; `dermserve batch
results JOB` gives each image's result or reason. A job whose every image failed ends FAILED
(ALL_IMAGES_FAILED)."""


def add_batch_commands(commands: Any, environ: Mapping[str, str]) -> None:
    """Register `batch` and its subcommands on the `dermserve` subparsers."""
    batch = commands.add_parser("batch", help="batch jobs: submit, status, watch, results, "
                                              "cancel, list")
    register(batch.add_subparsers(dest="batch_command", required=True), environ)


def register(commands: Any, environ: Mapping[str, str]) -> None:
    submit = commands.add_parser(
        "submit", help="submit a folder, files or a manifest CSV",
        description=SUBMIT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("inputs", nargs="+", metavar="DIR_OR_MANIFEST",
                        help="folders, images and manifests (.csv/.txt, or a `path` header)")
    submit.add_argument("--inline", action="store_true",
                        help="send the images in the request instead of their paths")
    submit.add_argument("--job-id", default="", help="idempotency key (client_job_id)")
    which = submit.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="pin a model version")
    which.add_argument("--label", help="use a labelled version, e.g. stable")
    submit.add_argument("--priority", choices=("low", "normal", "high"), default="normal")
    submit.add_argument("--no-wait", action="store_true", help="return once queued")
    submit.set_defaults(func=run_submit)
    for name, func, text in (("status", run_status, "show a job"),
                             ("watch", run_watch, "follow a job until it ends"),
                             ("cancel", run_cancel, "cancel a job"),
                             ("results", run_results, "print a job's results")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id", help="the server's job id, or the --job-id given at submit")
        command.set_defaults(func=func)
        if name == "results":
            command.add_argument("--format", choices=("jsonl", *EXPORTERS_BY_NAME),
                                 default="jsonl",
                                 help="ndjson: FHIR resources, one per line (Bulk Data)")
            command.add_argument("--output", type=Path, help="write here instead of stdout")
        add_connection_arguments(command, environ)
    add_connection_arguments(submit, environ)
    listing = commands.add_parser("list", help="list your jobs, newest first")
    listing.add_argument("--state", type=str.upper, choices=STATES,
                         help="only the jobs in this state now")
    listing.add_argument("--limit", type=non_negative, default=DEFAULT_JOBS_PAGE_SIZE,
                         help="print at most this many jobs (0: all)")
    listing.set_defaults(func=run_list)
    add_connection_arguments(listing, environ)


def non_negative(text: str) -> int:
    count = ascii_natural(text)
    if count is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a count (0 or more)")
    return count


# --- requests -------------------------------------------------------------------------------------
def submit_request(args: argparse.Namespace) -> pb.SubmitBatchJobRequest:
    request = pb.SubmitBatchJobRequest(client_job_id=args.job_id,
                                       priority=pb.BatchJobPriority.Value(
                                           f"BATCH_JOB_PRIORITY_{args.priority.upper()}"))
    if args.version is not None:
        request.model.version = args.version
    elif args.label:
        request.model.version_label = args.label
    paths = [Path(text) for text in args.inputs]
    if args.inline:
        request.inline.images.extend(pb.InlineImage(name=str(path), data=path.read_bytes())
                                     for path in local_images(paths))
    elif len(paths) == 1 and paths[0].suffix.lower() in MANIFEST_SUFFIXES:
        request.manifest.path = str(paths[0].resolve())
    else:  # the server recognises manifests among references too (batch/references.py)
        request.files.paths.extend(str(path.resolve()) for path in paths)
    return request


def local_images(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*"))
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            listed = manifest_paths(path.read_text(encoding="utf-8-sig"))
            yield from local_images([path.parent / text for text in listed])
        else:
            yield path


def refused_input(error: dict[str, str], request: pb.SubmitBatchJobRequest) -> str:
    """The path the server refused, which its message names by position only ("reference 2
    of the request", "the manifest"), for the caller's eyes: the server never logs a path."""
    message = error.get("message", "")
    if request.WhichOneof("input") == "manifest" and "the manifest" in message:
        return request.manifest.path
    position = re.search(r"reference (\d+) of the request", message)
    if position and int(position.group(1)) < len(request.files.paths):
        return request.files.paths[int(position.group(1))]
    return ""


# --- output ---------------------------------------------------------------------------------------
def job_json(job: pb.BatchJob) -> str:
    return json.dumps(MessageToDict(job, preserving_proto_field_name=True), indent=2)


def progress_line(job: pb.BatchJob) -> str:
    total = max(job.total_images, 1)
    filled = PROGRESS_WIDTH * job.done_images // total
    bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
    eta = f" ETA {job.eta_seconds:.0f}s" if job.eta_seconds >= 0 else ""
    state = pb.BatchJobState.Name(job.state).removeprefix("BATCH_JOB_STATE_")
    return (f"\r[{bar}] {job.done_images}/{job.total_images} {100 * job.done_images // total}%"
            f" failed {job.failed_images} abstained {job.abstained_images} {state}{eta}   ")


def follow(stub: pb_grpc.BatchJobsStub, job_id: str, args: argparse.Namespace,
           err: TextIO) -> pb.BatchJob:
    """Draw the progress bar from WatchBatchJob until the job ends; returns the last state."""
    last = None
    for update in stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job_id),
                                     metadata=call_metadata(args)):
        last = update.job
        err.write(progress_line(last))
        err.flush()
    err.write("\n")
    if last is None:
        raise RuntimeError("the watch stream ended without an update")
    return last


def exit_status(job: pb.BatchJob) -> int:
    return 0 if job.state in (pb.BATCH_JOB_STATE_SUCCEEDED, pb.BATCH_JOB_STATE_QUEUED,
                              pb.BATCH_JOB_STATE_RUNNING) else 1


# --- commands -------------------------------------------------------------------------------------
def with_stub(args: argparse.Namespace, action: Any) -> int:
    """Run `action(stub)`; a failed call prints its code, reason and message as JSON."""
    with open_channel(args) as channel:
        try:
            return int(action(pb_grpc.BatchJobsStub(channel)))
        except grpc.RpcError as exc:
            print(json.dumps(error_entry(exc)), file=sys.stderr)
            return 1


def summary_line(job: pb.BatchJob) -> str:
    """One line a person reads at the end of a job: its state and what became of its images."""
    state = pb.BatchJobState.Name(job.state).removeprefix("BATCH_JOB_STATE_")
    classified = job.done_images - job.failed_images
    line = (f"job {job.job_id} {state}: {job.total_images} images, {classified} classified "
            f"({job.abstained_images} of them need review), failed_images {job.failed_images}")
    if job.failed_images:
        line += f"; `dermserve batch results {job.job_id}` gives each image's reason"
    if job.error:
        line += f"\n  {job.error}"
    return line


def run_submit(args: argparse.Namespace) -> int:
    request = submit_request(args)

    def action(stub: pb_grpc.BatchJobsStub) -> int:
        try:
            response = stub.SubmitBatchJob(request, timeout=args.timeout,
                                           metadata=call_metadata(args))
        except grpc.RpcError as exc:
            entry = error_entry(exc)
            path = refused_input(entry, request)
            print(json.dumps({**entry, "path": path} if path else entry), file=sys.stderr)
            return 1
        job = response.job
        print(f"job {job.job_id} ({'created' if response.created else 'existing'}): "
              f"{job.total_images} images", file=sys.stderr)
        if not args.no_wait:
            job = follow(stub, job.job_id, args, sys.stderr)
            print(summary_line(job), file=sys.stderr)
        print(job_json(job))
        return exit_status(job)
    return with_stub(args, action)


def run_status(args: argparse.Namespace) -> int:
    def action(stub: pb_grpc.BatchJobsStub) -> int:
        job = stub.GetBatchJob(pb.GetBatchJobRequest(job_id=args.job_id), timeout=args.timeout,
                               metadata=call_metadata(args)).job
        print(job_json(job))
        return exit_status(job)
    return with_stub(args, action)


def run_watch(args: argparse.Namespace) -> int:
    def action(stub: pb_grpc.BatchJobsStub) -> int:
        job = follow(stub, args.job_id, args, sys.stderr)
        print(summary_line(job), file=sys.stderr)
        print(job_json(job))
        return exit_status(job)
    return with_stub(args, action)


def run_cancel(args: argparse.Namespace) -> int:
    def action(stub: pb_grpc.BatchJobsStub) -> int:
        job = stub.CancelBatchJob(pb.CancelBatchJobRequest(job_id=args.job_id),
                                  timeout=args.timeout, metadata=call_metadata(args)).job
        print(job_json(job))
        return 0
    return with_stub(args, action)


def run_results(args: argparse.Namespace) -> int:
    def action(stub: pb_grpc.BatchJobsStub) -> int:
        if args.output is None:
            write_results(stub, args, sys.stdout)
            return 0
        with args.output.open("w", encoding="utf-8", newline="") as out:
            write_results(stub, args, out)
        return 0
    return with_stub(args, action)


def result_pages(stub: pb_grpc.BatchJobsStub, args: argparse.Namespace
                 ) -> Iterator[pb.BatchImageResult]:
    token = ""
    while True:
        page = stub.ListBatchJobResults(pb.ListBatchJobResultsRequest(
            job_id=args.job_id, page_size=MAX_PAGE_SIZE, page_token=token),
            timeout=args.timeout, metadata=call_metadata(args))
        yield from page.results
        token = page.next_page_token
        if not token or not page.results:
            return


def run_list(args: argparse.Namespace) -> int:
    def action(stub: pb_grpc.BatchJobsStub) -> int:
        for job in listed_jobs(stub, args):
            print(json.dumps(MessageToDict(job, preserving_proto_field_name=True)))
        return 0
    return with_stub(args, action)


def listed_jobs(stub: pb_grpc.BatchJobsStub, args: argparse.Namespace) -> Iterator[pb.BatchJob]:
    """Up to `--limit` jobs (all with 0), page after page."""
    state = pb.BatchJobState.Value(f"BATCH_JOB_STATE_{args.state or 'UNSPECIFIED'}")
    left, token = args.limit or None, ""
    while left is None or left > 0:
        page = stub.ListBatchJobs(pb.ListBatchJobsRequest(
            page_size=min(left or MAX_JOBS_PAGE_SIZE, MAX_JOBS_PAGE_SIZE), page_token=token,
            state=state), timeout=args.timeout, metadata=call_metadata(args))
        yield from page.jobs[:left]
        left = None if left is None else left - len(page.jobs)
        token = page.next_page_token
        if not token:
            return


def write_results(stub: pb_grpc.BatchJobsStub, args: argparse.Namespace, out: TextIO) -> None:
    if args.format == "jsonl":
        for result in result_pages(stub, args):
            out.write(json.dumps(MessageToDict(result, preserving_proto_field_name=True)) + "\n")
        return
    # The job's own exporter, so that this file is the job's results.csv, byte for byte (the
    # NDJSON export's resources have the same ids, and fresh times).
    results = [image_result(message) for message in result_pages(stub, args)]
    job_id = stub.GetBatchJob(pb.GetBatchJobRequest(job_id=args.job_id), timeout=args.timeout,
                              metadata=call_metadata(args)).job.job_id  # the server's, for ids
    for piece in EXPORTERS_BY_NAME[args.format].lines(results, labels_of(results), job_id):
        out.write(piece)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dermserve batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    register(parser.add_subparsers(dest="batch_command", required=True), os.environ)
    args = parser.parse_args(argv)
    return quiet_on_closed_pipe(lambda: int(args.func(args)))


def quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """Run `command`; a reader that went away (`| head -5`) ends it quietly, as for `cat`:
    exit status 141 (128 + SIGPIPE) and no traceback. Python's own flush of stdout at exit
    would fail again, so stdout is pointed at /dev/null first."""
    try:
        status = command()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
