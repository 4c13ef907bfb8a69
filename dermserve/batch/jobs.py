"""The job service, grpc-free: submit, get, watch, cancel, list and page through results.

The BatchJobs servicer (service/batch_jobs.py) and tests call it; it imports neither grpc nor
TensorFlow. It validates everything a client sends before anything is queued: references inside
the input roots (InvalidRequest), counts and bytes within limits (ResourceExhausted).

A job belongs to the Caller that submitted it (core/identity.py): another caller gets
JobNotFound, exactly as for an unknown id, so that job ids cannot be probed; an operator sees
every job, and lists them all. An idempotency key (`client_job_id`) is scoped to its owner.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import redis

from dermserve.batch import defaults
from dermserve.batch.queues import ChunkQueues
from dermserve.batch.records import ChunkState, JobRecord, JobState, Priority
from dermserve.batch.references import ImageRef, InputRoots, check_count, manifest_rows
from dermserve.batch.results import ImageResult, ResultStore
from dermserve.batch.settings import BatchApiSettings
from dermserve.batch.store import IndexCursor, JobStore, connect
from dermserve.core.errors import BackendUnavailable, InvalidRequest, JobNotFound, ResourceExhausted
from dermserve.core.identity import ANONYMOUS, Caller
from dermserve.core.numbers import ascii_natural

log = logging.getLogger(__name__)

CLIENT_JOB_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{defaults.MAX_CLIENT_JOB_ID_LENGTH}}}")
SERVER_JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as submit makes them


@dataclass(frozen=True)
class InlineImage:
    """An image sent inside the request."""

    name: str
    data: bytes


@dataclass(frozen=True)
class JobInput:
    """A job's images: exactly one of the four sources is set."""

    inline: Sequence[InlineImage] = ()
    paths: Sequence[str] = ()
    manifest_path: str = ""
    manifest_csv: str = ""


@dataclass(frozen=True)
class SubmitRequest:
    input: JobInput
    client_job_id: str = ""
    model_version: int | None = None
    model_label: str = ""
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True)
class SubmitOutcome:
    job: JobRecord
    created: bool


@dataclass(frozen=True)
class ResultsPage:
    results: list[ImageResult]
    next_page_token: str
    job: JobRecord


@dataclass(frozen=True)
class JobsPage:
    jobs: list[JobRecord]
    next_page_token: str


@dataclass(frozen=True)
class JobLimits:
    max_images: int = defaults.DEFAULT_MAX_IMAGES_PER_JOB
    max_inline_images: int = defaults.DEFAULT_MAX_INLINE_IMAGES
    max_inline_bytes: int = defaults.DEFAULT_MAX_INLINE_BYTES
    max_manifest_bytes: int = defaults.DEFAULT_MAX_MANIFEST_BYTES


P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def job_store_errors() -> Iterator[None]:
    """The one place where Redis' errors become dermserve's: UNAVAILABLE, safe to retry, or
    RESOURCE_EXHAUSTED when Redis is out of memory."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("batch job store unreachable: %s", exc)
        raise BackendUnavailable("the batch job store is unreachable; retry later",
                                 "JOB_STORE_UNAVAILABLE") from exc
    except redis.OutOfMemoryError as exc:  # maxmemory reached: no new job fits until some expire
        log.warning("batch job store full: %s", exc)
        raise ResourceExhausted("the batch job store is full; retry later",
                                "JOB_STORE_FULL") from exc


def translated(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with job_store_errors():
            return method(*args, **kwargs)
    return wrapper


class JobService:
    """Batch jobs over a JobStore (state), a ResultStore (files) and ChunkQueues (work)."""

    def __init__(self, store: JobStore, results: ResultStore, queues: ChunkQueues,
                 roots: InputRoots, model_name: str, chunk_size: int,
                 limits: JobLimits | None = None,
                 watch_interval_s: float = defaults.DEFAULT_WATCH_INTERVAL_S) -> None:
        self.store = store
        self.results = results
        self.queues = queues
        self.roots = roots
        self.model_name = model_name
        self.chunk_size = chunk_size
        self.limits = limits or JobLimits()
        self.watch_interval_s = watch_interval_s

    @classmethod
    def from_settings(cls, settings: BatchApiSettings) -> JobService:
        """Everything the front service needs to serve BatchJobs: two Redis clients, no TF."""
        retries = defaults.DEFAULT_API_REDIS_RETRIES
        store = JobStore.from_settings(connect(settings, retries=retries), settings)
        queues = ChunkQueues.from_settings(
            connect(settings, decode_responses=False, retries=retries), settings)
        limits = JobLimits(settings.max_images_per_job, settings.max_inline_images,
                           settings.max_inline_bytes, settings.max_manifest_bytes)
        return cls(store, ResultStore(settings.batch_output_dir), queues,
                   InputRoots(settings.input_roots), settings.model_name, settings.chunk_size,
                   limits, settings.watch_interval_s)

    def export_paths(self, job_id: str) -> dict[str, Path]:
        """A finished job's result files, by format name."""
        return self.results.export_paths(job_id)

    def close(self) -> None:
        self.store.close()
        self.queues.connection.close()

    # --- submit ----------------------------------------------------------------------------------
    @translated
    def submit(self, request: SubmitRequest, caller: Caller = ANONYMOUS) -> SubmitOutcome:
        check_request(request)
        idempotency_key = (self.store.idempotency_key(caller.identity, request.client_job_id)
                           if request.client_job_id else "")
        if idempotency_key:
            earlier = self._earlier_job(idempotency_key)
            if earlier is not None:
                return SubmitOutcome(earlier, created=False)
        job_id = uuid.uuid4().hex
        try:
            refs = self._collect(job_id, request.input)
            record = self._create(job_id, request, refs, caller, idempotency_key)
        except BaseException:
            shutil.rmtree(self.results.job_dir(job_id), ignore_errors=True)
            raise
        if idempotency_key:
            earlier_id = self.store.claim_idempotency_key(idempotency_key, job_id)
            if earlier_id is not None and self.store.exists(earlier_id):
                self._discard(job_id)  # lost a race with an identical submission
                return SubmitOutcome(self.store.load(earlier_id), created=False)
            if earlier_id is not None:  # the earlier job expired: the key is ours now
                self.store.remap_idempotency_key(idempotency_key, job_id)
        self.queues.enqueue_chunks(job_id, range(record.chunk_count), request.priority)
        log.info("batch job %s: %d images in %d chunks", job_id, record.total,
                 record.chunk_count)
        return SubmitOutcome(record, created=True)

    def _earlier_job(self, idempotency_key: str) -> JobRecord | None:
        earlier_id = self.store.idempotency_job(idempotency_key)
        if earlier_id and self.store.exists(earlier_id):
            return self.store.load(earlier_id)
        return None

    def _collect(self, job_id: str, job_input: JobInput) -> list[ImageRef]:
        sources = [bool(job_input.inline), bool(job_input.paths), bool(job_input.manifest_path),
                   bool(job_input.manifest_csv)]
        if sum(sources) != 1:
            raise InvalidRequest("send exactly one of inline images, file references or a "
                                 "manifest", "NO_INPUT")
        if job_input.inline:
            return self._spool(job_id, job_input.inline)
        if job_input.paths:
            return self.roots.expand(job_input.paths, self.limits.max_images,
                                     max_manifest_bytes=self.limits.max_manifest_bytes)
        return self._from_manifest(job_input)

    def _spool(self, job_id: str, images: Sequence[InlineImage]) -> list[ImageRef]:
        check_inline(images, self.limits)
        return [ImageRef(image.name or f"inline:{index}",
                         self.results.spool_inline(job_id, index, image.data))
                for index, image in enumerate(images)]

    def _from_manifest(self, job_input: JobInput) -> list[ImageRef]:
        if job_input.manifest_path:
            text, base = self.roots.read_manifest(job_input.manifest_path,
                                                  self.limits.max_manifest_bytes)
        else:
            if len(job_input.manifest_csv.encode()) > self.limits.max_manifest_bytes:
                raise ResourceExhausted("the manifest is over the server's size limit",
                                        "MANIFEST_TOO_LARGE")
            text, base = job_input.manifest_csv, None
        rows = manifest_rows(text)
        check_count(len(rows), self.limits.max_images)
        return self.roots.expand([row[0] for row in rows], self.limits.max_images,
                                 relative_to=base, source="the manifest",
                                 max_manifest_bytes=None, contexts=[row[1] for row in rows])

    def _create(self, job_id: str, request: SubmitRequest, refs: list[ImageRef], caller: Caller,
                idempotency_key: str) -> JobRecord:
        if not refs:
            raise InvalidRequest("the job has no images", "EMPTY_JOB")
        check_count(len(refs), self.limits.max_images)
        chunks = [refs[start:start + self.chunk_size]
                  for start in range(0, len(refs), self.chunk_size)]
        for index, chunk in enumerate(chunks):
            self.results.write_chunk_inputs(job_id, index, chunk)
        fields = self._fields(job_id, request, len(refs), len(chunks))
        fields.update(owner=caller.identity, idempotency_key=idempotency_key)
        self.store.create(fields, len(chunks))
        return self.store.load(job_id)

    def _fields(self, job_id: str, request: SubmitRequest, total: int,
                chunk_count: int) -> dict[str, str | int | float]:
        pinned = request.model_version
        fields: dict[str, str | int | float] = {
            "job_id": job_id, "client_job_id": request.client_job_id,
            "state": JobState.QUEUED.value, "priority": request.priority.value,
            "total": total, "chunk_count": chunk_count, "chunk_size": self.chunk_size,
            "done": 0, "failed": 0, "abstained": 0, "chunks_done": 0,
            "model_name": self.model_name,
            "requested_version": "" if pinned is None else pinned,
            "requested_label": request.model_label,
            "created": time.time(), "started": "", "finished": "", "error": "",
            "job_dir": str(self.results.job_dir(job_id)),
        }
        if pinned is not None:  # else absent: the first chunk sets it, once (HSETNX)
            fields["resolved_version"] = pinned
        return fields

    def _discard(self, job_id: str) -> None:
        self.store.delete(job_id)
        shutil.rmtree(self.results.job_dir(job_id), ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------------
    def resolve(self, job_ref: str, caller: Caller = ANONYMOUS) -> str:
        """The server's job id for `job_ref`: the server's own id, or the `client_job_id` the
        caller chose at submit time (users type the name they gave, not a 32-digit hex id). Any
        other text is refused before it is echoed in a message or a log line: a 60,000-character
        id made 60 KB log lines and an error too large for gRPC's metadata."""
        if not (SERVER_JOB_ID.fullmatch(job_ref) or CLIENT_JOB_ID.fullmatch(job_ref)):
            raise InvalidRequest("a job id is the server's 32 hex digits or a client_job_id of "
                                 f"1-{defaults.MAX_CLIENT_JOB_ID_LENGTH} characters of "
                                 "[A-Za-z0-9._:-]", "BAD_JOB_ID")
        if SERVER_JOB_ID.fullmatch(job_ref) and self.store.exists(job_ref):
            return job_ref
        if CLIENT_JOB_ID.fullmatch(job_ref):
            key = self.store.idempotency_key(caller.identity, job_ref)
            job_id = self.store.idempotency_job(key)
            if job_id is not None:
                return job_id
            if not SERVER_JOB_ID.fullmatch(job_ref):
                raise JobNotFound(f"no batch job {job_ref!r} (unknown, or expired after its "
                                  "TTL)")
        return job_ref  # a server id (get() answers NOT_FOUND if unknown) or BAD_JOB_ID

    @translated
    def get(self, job_id: str, caller: Caller = ANONYMOUS) -> JobRecord:
        job_id = self.resolve(job_id, caller)
        self.results.job_dir(job_id)  # rejects malformed ids before they reach Redis
        record = self.store.load(job_id)
        if not caller.may_see(record.owner):
            raise JobNotFound(f"no batch job {job_id!r} (unknown, or expired after its TTL)")
        return record

    def watch(self, job_id: str, is_active: Callable[[], bool] = lambda: True,
              caller: Caller = ANONYMOUS) -> Iterator[JobRecord]:
        """The job now, then again whenever its progress changes, ending with a terminal state."""
        last: tuple[object, ...] | None = None
        while is_active():
            # translated: Redis away ends the stream with UNAVAILABLE
            record = self.get(job_id, caller)
            if record.progress_key != last:
                last = record.progress_key
                yield record
            if record.state.terminal:
                return
            time.sleep(self.watch_interval_s)

    @translated
    def cancel(self, job_id: str, caller: Caller = ANONYMOUS) -> JobRecord:
        job_id = self.get(job_id, caller).job_id
        record = self.store.cancel(job_id)
        log.info("batch job %s cancelled", job_id)
        return record

    @translated
    def list_jobs(self, caller: Caller = ANONYMOUS, page_size: int = 0, page_token: str = "",
                  state: JobState | None = None) -> JobsPage:
        """The caller's jobs (an operator's: everyone's), newest first, optionally in `state`
        only. Reads at most MAX_JOBS_READS batches of the index, so a page may come back short
        with a token when a filter matches few jobs."""
        size = page_size_of(page_size, defaults.DEFAULT_JOBS_PAGE_SIZE,
                            defaults.MAX_JOBS_PAGE_SIZE)
        cursor = parse_jobs_token(page_token)
        owner = None if caller.operator else caller.identity
        batch = max(size, defaults.JOBS_READ_BATCH)
        jobs: list[JobRecord] = []
        for _ in range(defaults.MAX_JOBS_READS):
            entries = self.store.indexed_jobs(owner, cursor, batch)
            for cursor, record in entries:
                if record is not None and caller.may_see(record.owner) and (
                        state is None or record.state is state):
                    jobs.append(record)
                    if len(jobs) == size:
                        return JobsPage(jobs, jobs_token(cursor))
            if len(entries) < batch:
                return JobsPage(jobs, "")
        return JobsPage(jobs, jobs_token(cursor) if cursor is not None else "")

    @translated
    def list_results(self, job_id: str, page_size: int = 0, page_token: str = "",
                     caller: Caller = ANONYMOUS) -> ResultsPage:
        record = self.get(job_id, caller)
        size = page_size_of(page_size, defaults.DEFAULT_PAGE_SIZE, defaults.MAX_PAGE_SIZE)
        position = parse_page_token(page_token, record.total)
        results, position = self._page(record, position, size)
        token = "" if position >= record.total else str(position)
        return ResultsPage(results, token, record)

    def _page(self, record: JobRecord, position: int, size: int) -> tuple[list[ImageResult], int]:
        states = self.store.chunk_states(record.job_id)
        page: list[ImageResult] = []
        while len(page) < size and position < record.total:
            chunk = position // record.chunk_size
            if states.get(chunk) is not ChunkState.DONE:
                if not record.state.terminal:
                    break  # still running: the client asks again later from here
                position = (chunk + 1) * record.chunk_size  # never ran (cancelled): skip
                continue
            rows = [r for r in self.results.read_chunk_results(record.job_id, chunk)
                    if r.index >= position][:size - len(page)]
            page.extend(rows)
            position = rows[-1].index + 1 if rows else (chunk + 1) * record.chunk_size
        return page, min(position, record.total)


def check_request(request: SubmitRequest) -> None:
    if request.client_job_id and not CLIENT_JOB_ID.fullmatch(request.client_job_id):
        raise InvalidRequest("client_job_id must be 1-128 characters of [A-Za-z0-9._:-]",
                             "BAD_CLIENT_JOB_ID")
    if request.model_version is not None and request.model_version <= 0:
        raise InvalidRequest("a pinned model version must be a positive integer",
                             "BAD_MODEL_VERSION")


def check_inline(images: Sequence[InlineImage], limits: JobLimits) -> None:
    if len(images) > limits.max_inline_images:
        raise ResourceExhausted(f"{len(images)} inline images; the limit is "
                                f"{limits.max_inline_images}: reference files instead",
                                "TOO_MANY_INLINE_IMAGES")
    total = sum(len(image.data) for image in images)
    if total > limits.max_inline_bytes:
        raise ResourceExhausted(f"{total} bytes of inline images; the limit is "
                                f"{limits.max_inline_bytes}", "INLINE_IMAGES_TOO_LARGE")
    if any(len(image.name) > defaults.MAX_INLINE_NAME_LENGTH for image in images):
        raise InvalidRequest("an inline image name is over 512 characters", "BAD_IMAGE_NAME")


def parse_page_token(token: str, total: int) -> int:
    if not token:
        return 0
    position = ascii_natural(token)
    if position is None or position > total:
        raise InvalidRequest("malformed page_token", "BAD_PAGE_TOKEN")
    return position


def page_size_of(page_size: int, default: int, maximum: int) -> int:
    if page_size < 0:
        raise InvalidRequest("page_size must not be negative", "BAD_PAGE_SIZE")
    return min(page_size or default, maximum)


def jobs_token(cursor: IndexCursor) -> str:
    """Opaque to clients: where the listing stopped, as (creation time, job id)."""
    score, job_id = cursor
    return base64.urlsafe_b64encode(f"{score!r}/{job_id}".encode()).decode("ascii")


def parse_jobs_token(token: str) -> IndexCursor | None:
    if not token:
        return None
    try:
        score_text, _, job_id = base64.urlsafe_b64decode(token.encode("ascii")).decode(
            "ascii").partition("/")
        score = float(score_text)
    except (ValueError, binascii.Error, UnicodeError):
        score, job_id = math.nan, ""
    if not math.isfinite(score) or not SERVER_JOB_ID.fullmatch(job_id):
        raise InvalidRequest("malformed page_token", "BAD_PAGE_TOKEN")
    return score, job_id
