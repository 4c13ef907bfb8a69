"""Batch job families: hostile references and manifests, the symlink race (a path component
swapped for a symlink leading outside the roots after submission), and one client reaching for
another client's job."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from dermserve.v1 import batch_jobs_pb2 as jobs_pb
from dermserve.v1 import batch_jobs_pb2_grpc as jobs_grpc
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack import corpus
from devtools.attack.calls import AUTH, CALL_TIMEOUT_S, Metadata, all_results, bearer, finish_job
from devtools.attack.record import Record
from devtools.attack.stack import JOBS_ONLY_TOKEN, OPERATOR_TOKEN, TOKENS, Stack

Submit = jobs_pb.SubmitBatchJobRequest


def files(paths: list[str], client_job_id: str = "") -> Submit:
    return Submit(files=jobs_pb.FileReferences(paths=paths), client_job_id=client_job_id)


def references(stack: Stack, record: Record, quick: bool) -> None:
    corpus.reference_tree(stack.input_root)
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        requests = [(name, files(paths)) for name, paths in corpus.hostile_references()]
        requests += [(name, Submit(manifest=jobs_pb.Manifest(**{kind: value})))
                     for name, kind, value in corpus.hostile_manifests()]
        for name, request in requests:
            results = record.call("references", name,
                                  partial(submit_and_read, stub, request, quick))
            record_images(record, "references", results or [])


def submit_and_read(stub: jobs_grpc.BatchJobsStub, request: Submit, quick: bool
                    ) -> list[jobs_pb.BatchImageResult]:
    """Submit, read the job, and (full mode) watch it to its end, then read its results: what a
    client does."""
    job = stub.SubmitBatchJob(request, metadata=AUTH, timeout=CALL_TIMEOUT_S).job
    stub.GetBatchJob(jobs_pb.GetBatchJobRequest(job_id=job.job_id), metadata=AUTH,
                     timeout=CALL_TIMEOUT_S)
    if not quick:
        finish_job(stub, job.job_id)
    return all_results(stub, job.job_id)


def record_images(record: Record, family: str, results: list[jobs_pb.BatchImageResult]) -> None:
    """Each image's outcome inside a job, as IMAGE:<code> (IMAGE:INTERNAL counts as INTERNAL)."""
    for result in results:
        record.add(family, "image", f"IMAGE:{result.error.code or 'OK'}", result.error.reason)


def symlink_race(stack: Stack, record: Record, quick: bool) -> None:
    """Defect 9, made deterministic: the worker is paused (SIGSTOP) while a job is submitted and
    its directory and one of its files are swapped for symlinks to the same names outside the
    roots; the worker, resumed, must refuse every one (SYMLINK_REFUSED) and read none."""
    family = "symlink_race"
    paths = corpus.race_tree(stack.input_root, stack.outside, 4 if quick else 50)
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        with stack.paused("worker"):
            submitted = record.call(family, "submit", lambda: stub.SubmitBatchJob(
                files(paths), metadata=AUTH, timeout=CALL_TIMEOUT_S))
            corpus.swap_for_symlinks(stack.input_root, stack.outside)
        if submitted is None:
            record.expect(family, False, "the job was refused at submission")
            return
        job_id = submitted.job.job_id
        record.call(family, "watch", partial(finish_job, stub, job_id))
        results = record.call(family, "results", partial(all_results, stub, job_id)) or []
    record_images(record, family, results)
    read = [result for result in results if not result.error.code]
    record.expect(family, not read, f"{len(read)} files outside the input roots were read")
    record.expect(family, len(results) == len(paths) and all(
        result.error.reason == "SYMLINK_REFUSED" for result in results),
        "a swapped path was not refused SYMLINK_REFUSED")


def cross_client(stack: Stack, record: Record, quick: bool) -> None:
    """A second token holder reaches for the first one's job by its id (get, results, watch,
    cancel: each must be NOT_FOUND) and by its client_job_id (a job of its own); the operator
    token sees it."""
    family = "cross_client"
    (stack.input_root / "cross").mkdir()
    (stack.input_root / "cross" / "a.jpg").write_bytes(corpus.good_jpeg())
    owner, other = bearer(TOKENS["attack-a"]), bearer(TOKENS["attack-b"])
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        mine = record.call(family, "owner-submit", lambda: stub.SubmitBatchJob(
            files(["cross/a.jpg"], "shared-key"), metadata=owner, timeout=CALL_TIMEOUT_S))
        if mine is None:
            record.expect(family, False, "the owner's job was refused")
            return
        job_id = mine.job.job_id
        for name, call in job_calls(stub, job_id).items():
            outcome = record.attempt(family, f"other-{name}", partial(call, other))
            record.expect(family, outcome[0] == "NOT_FOUND" if isinstance(outcome, tuple)
                          else False, f"another client's {name} of a job answered {outcome}")
        theirs = record.call(family, "other-same-client-job-id", lambda: stub.SubmitBatchJob(
            files(["cross/a.jpg"], "shared-key"), metadata=other, timeout=CALL_TIMEOUT_S))
        record.expect(family, theirs is not None and theirs.created
                      and theirs.job.job_id != job_id,
                      "the same client_job_id from another client did not make a job of its own")
        calls = job_calls(stub, job_id)
        for name, metadata in (("owner", owner), ("operator", bearer(OPERATOR_TOKEN))):
            seen = record.call(family, f"{name}-get", partial(calls["get"], metadata))
            record.expect(family, seen is not None, f"the {name} could not read the job")
        guessed = record.attempt(family, "guessed-id", partial(
            job_calls(stub, "0" * 32)["get"], other))
        record.expect(family, isinstance(guessed, tuple) and guessed[0] == "NOT_FOUND",
                      f"a guessed job id answered {guessed}")
        jobs_only = record.attempt(family, "jobs-only-token-own-job", lambda: stub.SubmitBatchJob(
            files(["cross/a.jpg"]), metadata=bearer(JOBS_ONLY_TOKEN), timeout=CALL_TIMEOUT_S))
        record.expect(family, not isinstance(jobs_only, tuple),
                      "a token granted BatchJobs could not submit")


HOSTILE_PAGE_TOKENS = ("²", "١", "0" * 19, "-1", " 1", "9" * 60_000)
"""Unicode digits that str.isdigit() took and int() refused (INTERNAL), too many digits, signs,
spaces, and one 60 KB token."""
LONG_ID = "a" * 60_000
"""An id that reached Redis, a 60 KB log line and an error beyond gRPC's metadata limit."""


def listing_tokens(stack: Stack, record: Record, quick: bool) -> None:
    """Hostile page tokens on both listings, and over-long ids on every call that names a job
    and as a version label: each INVALID_ARGUMENT (never INTERNAL or RESOURCE_EXHAUSTED)."""
    family = "listing_tokens"
    (stack.input_root / "listing").mkdir()
    (stack.input_root / "listing" / "a.jpg").write_bytes(corpus.good_jpeg())
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        mine = record.call(family, "submit", lambda: stub.SubmitBatchJob(
            files(["listing/a.jpg"]), metadata=AUTH, timeout=CALL_TIMEOUT_S))
        job_id = mine.job.job_id if mine is not None else "0" * 32
        attempts: list[tuple[str, Callable[[], object]]] = []
        for index, token in enumerate(HOSTILE_PAGE_TOKENS):
            attempts.append((f"results-token-{index}", partial(
                stub.ListBatchJobResults, jobs_pb.ListBatchJobResultsRequest(
                    job_id=job_id, page_token=token), metadata=AUTH, timeout=CALL_TIMEOUT_S)))
            attempts.append((f"jobs-token-{index}", partial(
                stub.ListBatchJobs, jobs_pb.ListBatchJobsRequest(page_token=token),
                metadata=AUTH, timeout=CALL_TIMEOUT_S)))
        attempts += [(f"long-id-{name}", partial(call, AUTH))
                     for name, call in job_calls(stub, LONG_ID).items()]
        classifier = pb_grpc.LesionClassifierStub(channel)
        attempts.append(("long-version-label", partial(
            classifier.Classify, pb.ClassifyRequest(
                image=corpus.good_jpeg(), model=pb.ModelSelector(version_label=LONG_ID)),
            metadata=AUTH, timeout=CALL_TIMEOUT_S)))
        for name, call in attempts:
            outcome = record.attempt(family, name, call)
            record.expect(family, isinstance(outcome, tuple)
                          and outcome[0] == "INVALID_ARGUMENT", f"{name} answered {outcome}")


def job_calls(stub: jobs_grpc.BatchJobsStub, job_id: str
              ) -> dict[str, Callable[[Metadata], object]]:
    """Every call that names a job, as the given caller."""
    return {
        "get": lambda md: stub.GetBatchJob(jobs_pb.GetBatchJobRequest(job_id=job_id),
                                           metadata=md, timeout=CALL_TIMEOUT_S),
        "results": lambda md: stub.ListBatchJobResults(
            jobs_pb.ListBatchJobResultsRequest(job_id=job_id), metadata=md,
            timeout=CALL_TIMEOUT_S),
        "watch": lambda md: next(iter(stub.WatchBatchJob(
            jobs_pb.WatchBatchJobRequest(job_id=job_id), metadata=md, timeout=CALL_TIMEOUT_S))),
        "cancel": lambda md: stub.CancelBatchJob(jobs_pb.CancelBatchJobRequest(job_id=job_id),
                                                 metadata=md, timeout=CALL_TIMEOUT_S),
    }
