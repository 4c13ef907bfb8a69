"""Image families: hostile images one by one, many-scan progressive JPEGs (CPU bombs) at once,
and 40-megapixel CMYK and EXIF-rotated JPEGs at once, to the front and to the worker (memory)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from dermserve.v1 import batch_jobs_pb2 as jobs_pb
from dermserve.v1 import batch_jobs_pb2_grpc as jobs_grpc
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack import corpus, proc
from devtools.attack.calls import AUTH, CALL_TIMEOUT_S, all_results, classify, finish_job
from devtools.attack.record import Record
from devtools.attack.stack import Stack
from tests.hostile_images import scan_count

T = TypeVar("T")
BOMB_REFUSAL_LIMIT_S = 2.0
"""Seconds a refusal of a many-scan JPEG may take: decoding one costs about a minute of CPU, so
a refusal within this was made before decoding."""
LARGE_TIMEOUT_S = 120.0  # seconds for a 40-megapixel image on 2 shared cores


def images(stack: Stack, record: Record, quick: bool) -> None:
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, data in corpus.hostile_images(quick):
            record.call("images", name, partial(classify, stub, data))


def at_once(actions: list[Callable[[], T]]) -> list[T]:
    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(lambda action: action(), actions))


def scan_bomb(stack: Stack, record: Record, quick: bool) -> None:
    """Progressive JPEGs with 3,000 extra scans, sent at once: each must be refused
    TOO_MANY_SCANS before decoding (four of them used to cost 80 CPU seconds)."""
    family = "scan_bomb"
    bomb = corpus.scan_bomb(4000 if quick else 6000, 3000)
    cpu_before = proc.cpu_s(stack.pid("front"))
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)

        def one(index: int) -> tuple[object, float]:
            started = time.monotonic()
            outcome = record.attempt(family, f"bomb-{index}", partial(classify, stub, bomb))
            return outcome, time.monotonic() - started
        outcomes = at_once([partial(one, index) for index in range(4 if quick else 8)])
    slowest = max(seconds for _, seconds in outcomes)
    record.measure(family, "bomb", {"bytes": len(bomb), "scans": scan_count(bomb)})
    record.measure(family, "slowest_refusal_s", round(slowest, 3))
    record.measure(family, "front_cpu_s", round(proc.cpu_s(stack.pid("front")) - cpu_before, 2))
    record.expect(family, all(outcome == ("INVALID_ARGUMENT", "TOO_MANY_SCANS")
                              for outcome, _ in outcomes), "a bomb was not refused TOO_MANY_SCANS")
    record.expect_fast(family, slowest < BOMB_REFUSAL_LIMIT_S,
                       f"a bomb took {slowest:.2f} s to refuse (limit {BOMB_REFUSAL_LIMIT_S} s)")


def dicom_bombs(stack: Stack, record: Record, quick: bool) -> None:
    """DICOM structure bombs, polyglots and a JPEG of junk, sent at once to the front, then as
    a job to the worker: each refused with its reason, and neither process' peak RSS may grow
    by GROWTH_LIMIT_MB (one item bomb cost the front 0.9 GB, the worker 880 MB)."""
    family = "dicom_bombs"
    bombs = corpus.dicom_bombs()
    with stack.channel() as channel, peak_growth(stack, "front", record, family):
        stub = pb_grpc.LesionClassifierStub(channel)
        outcomes = at_once([partial(record.attempt, family, name, partial(classify, stub, data))
                            for name, data, _ in bombs * (1 if quick else 2)])
    wanted = [("INVALID_ARGUMENT", reason) for _, _, reason in bombs] * (1 if quick else 2)
    record.expect(family, outcomes == wanted,
                  f"the front answered {outcomes}, not {wanted}")
    directory = stack.input_root / "dicom-bombs"
    directory.mkdir()
    for name, data, _ in bombs:
        (directory / f"{name}.dcm").write_bytes(data)
    request = jobs_pb.SubmitBatchJobRequest(files=jobs_pb.FileReferences(paths=["dicom-bombs"]))
    with stack.channel() as channel, peak_growth(stack, "worker", record, family):
        job = record.call(family, "job", lambda: run_job(jobs_grpc.BatchJobsStub(channel),
                                                         request)) or []
    for result in job:
        record.add(family, "image", f"IMAGE:{result.error.code or 'OK'}", result.error.reason)
    found = sorted(result.error.reason for result in job)
    record.expect(family, found == sorted(reason for _, _, reason in bombs),
                  f"the worker answered {found}")


def large_jpegs(stack: Stack, record: Record, quick: bool) -> None:
    """40-megapixel CMYK and EXIF-rotated JPEGs at once: to the front (2 or 8 Classify calls),
    then to the worker (a job of 2 or 16 such files: the 16 of the report took it from 0.96 to
    3.56 GB). Both must classify them all, and neither's peak RSS may grow by GROWTH_LIMIT_MB."""
    family = "large_jpegs"
    large = corpus.large_jpegs() * (1 if quick else 4)
    with stack.channel() as channel, peak_growth(stack, "front", record, family):
        stub = pb_grpc.LesionClassifierStub(channel)
        answers = at_once([partial(record.call, family, name, partial(
            classify, stub, data, timeout=LARGE_TIMEOUT_S)) for name, data in large])
    record.expect(family, all(answers), "a large JPEG was not classified by the front")
    directory = stack.input_root / "large"
    directory.mkdir()
    batch = large * (1 if quick else 2)
    for index, (name, data) in enumerate(batch):
        (directory / f"{index}-{name}.jpg").write_bytes(data)
    request = jobs_pb.SubmitBatchJobRequest(files=jobs_pb.FileReferences(paths=["large"]))
    with stack.channel() as channel, peak_growth(stack, "worker", record, family):
        jobs = jobs_grpc.BatchJobsStub(channel)
        job = record.call(family, "job", lambda: run_job(jobs, request))
    record.expect(family, job is not None and len(job) == len(batch)
                  and not any(result.error.code for result in job),
                  "a large JPEG was not classified by the worker")


@contextmanager
def peak_growth(stack: Stack, name: str, record: Record, family: str) -> Iterator[None]:
    """Measure how far process `name`'s peak RSS rises over the block, and judge it."""
    pid = stack.pid(name)
    proc.reset_peak(pid)
    before = proc.rss_mb(pid)
    yield
    growth = proc.peak_mb(pid) - before
    record.measure(family, f"{name}_peak_growth_mb", round(growth, 1))
    record.expect(family, growth < proc.GROWTH_LIMIT_MB,
                  f"{name}'s peak RSS grew {growth:.0f} MB (limit {proc.GROWTH_LIMIT_MB:.0f})")


def run_job(stub: jobs_grpc.BatchJobsStub, request: jobs_pb.SubmitBatchJobRequest
            ) -> list[jobs_pb.BatchImageResult]:
    """Submit, watch to the end, and read every result."""
    job_id = stub.SubmitBatchJob(request, metadata=AUTH, timeout=CALL_TIMEOUT_S).job.job_id
    finish_job(stub, job_id)
    return all_results(stub, job_id)
