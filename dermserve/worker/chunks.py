"""Running one chunk: claim it, classify its images in small batches, write its results file,
count it once. Also the job's last step, the exports.

A chunk holds a lease in Redis while it runs (renewed by a thread every third of its TTL). When
a worker dies (SIGKILL, OOM, a lost node) the lease expires and the reaper (worker/reaper.py)
queues the chunk again; the rerun replaces the results file and the completion is counted once,
so no image is lost or counted twice. Between batches the chunk checks the job's state, so a
cancel stops it within one batch.

rq calls `run_chunk` / `run_finalize` by import path. They find the process's ChunkRunner (and
so its loaded model) through CURRENT_RUNNER, a context variable set by the worker around each
job, like rq's own get_current_job(); no module state outlives a job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

from dermserve.batch.queues import ChunkQueues
from dermserve.batch.records import ALL_IMAGES_FAILED, ChunkOutcome, ChunkState, JobRecord, JobState
from dermserve.batch.references import ImageRef, InputRoots, open_checked
from dermserve.batch.results import ImageResult, ResultStore
from dermserve.batch.store import JobStore
from dermserve.core.backends.base import ModelRef, VersionInfo
from dermserve.core.context import PatientContext
from dermserve.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    DermserveError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
)
from dermserve.core.image.limits import ImageLimits
from dermserve.core.prediction import Prediction
from dermserve.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT = (BackendUnavailable, BackendTimeout)
FINAL_LEASE = "final"


class BatchClassifier(Protocol):
    """What a chunk needs of core.classifier.Classifier (a test may pass a small fake)."""

    def classify_many(self, images: Sequence[bytes], ref: ModelRef | None = None,
                      request_ids: Sequence[str] | None = None,
                      timeout: float | None = None,
                      contexts: Sequence[PatientContext | None] | None = None,
                      ) -> list[Prediction | DermserveError]: ...

    def describe(self, ref: ModelRef | None = None, timeout: float | None = None
                 ) -> VersionInfo: ...


class ChunkObserver(Protocol):
    """Receives what the worker's metrics count (worker/metrics.py implements it)."""

    def chunk_finished(self, outcome: ChunkOutcome, seconds: float,
                       results: Sequence[ImageResult]) -> None: ...

    def backend_retried(self) -> None: ...

    def busy(self, busy: bool) -> None: ...


class NullChunkObserver:
    def chunk_finished(self, outcome: ChunkOutcome, seconds: float,
                       results: Sequence[ImageResult]) -> None:
        pass

    def backend_retried(self) -> None:
        pass

    def busy(self, busy: bool) -> None:
        pass


@dataclass(frozen=True)
class ChunkPolicy:
    """The knobs of chunk execution (from WorkerSettings)."""

    images_per_call: int
    lease_ttl_s: float
    max_attempts: int
    backend_retries: int
    backoff_base_s: float
    backoff_cap_s: float
    classify_timeout_s: float
    limits: ImageLimits
    pipeline_depth: int = 2

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> ChunkPolicy:
        return cls(settings.images_per_call, settings.lease_ttl_s, settings.max_chunk_attempts,
                   settings.backend_retries, settings.backoff_base_s, settings.backoff_cap_s,
                   settings.classify_timeout_s, settings.image_limits, settings.pipeline_depth)


class LeaseKeeper:
    """Renews a lease from a thread while the block runs, and releases it at the end."""

    def __init__(self, store: JobStore, job_id: str, index: int | str, token: str,
                 ttl_s: float) -> None:
        self.store, self.job_id, self.index, self.token, self.ttl_s = (
            store, job_id, index, token, ttl_s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True,
                                       name=f"lease-{job_id[:8]}-{index}")

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self.store.release_lease(self.job_id, self.index, self.token)
        except Exception:  # noqa: BLE001 - an unreleased lease just expires
            log.warning("could not release lease %s/%s", self.job_id, self.index)

    def _renew(self) -> None:
        while not self.stop.wait(self.ttl_s / 3):
            try:
                if not self.store.renew_lease(self.job_id, self.index, self.token, self.ttl_s):
                    log.warning("lease of %s/%s lapsed or was taken over; the chunk goes on and "
                                "counts once", self.job_id, self.index)
            except Exception:  # noqa: BLE001 - Redis away: keep trying until the chunk ends
                log.warning("could not renew lease %s/%s", self.job_id, self.index)


class ChunkRunner:
    """Runs chunks in one worker process, with the process's one classifier."""

    def __init__(self, store: JobStore, results: ResultStore, queues: ChunkQueues,
                 classifier: BatchClassifier, roots: InputRoots, policy: ChunkPolicy,
                 observer: ChunkObserver | None = None, name: str = "",
                 inside_chunk: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.results = results
        self.queues = queues
        self.classifier = classifier
        self.roots = roots
        self.policy = policy
        self.observer: ChunkObserver = observer or NullChunkObserver()
        self.name = name or uuid.uuid4().hex[:8]
        self.inside_chunk = inside_chunk  # a test's hook (tests/worker/hold.py); None in production
        self.pool = ThreadPoolExecutor(max_workers=max(1, policy.pipeline_depth),
                                       thread_name_prefix="chunk-batch")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def token(self) -> str:
        return f"{self.name}:{uuid.uuid4().hex}"

    # --- one chunk -------------------------------------------------------------------------------
    def run(self, job_id: str, index: int, attempt: int) -> ChunkOutcome:
        """Run chunk `index`; returns how it ended."""
        token = self.token()
        claim = self.store.claim_chunk(job_id, index, token, self.policy.lease_ttl_s)
        if claim is not ChunkOutcome.OK:
            log.info("chunk %s/%d not run: %s", job_id, index, claim)
            return claim
        started = time.perf_counter()
        with LeaseKeeper(self.store, job_id, index, token, self.policy.lease_ttl_s):
            if self.inside_chunk is not None:
                self.inside_chunk(job_id, index)
            outcome, results = self._run_claimed(job_id, index, attempt, token)
        self.observer.chunk_finished(outcome, time.perf_counter() - started, results)
        log.info("chunk %s/%d attempt %d: %s (%d images)", job_id, index, attempt, outcome,
                 len(results))
        if outcome is ChunkOutcome.LAST:
            self.finalize(job_id)
        return outcome

    def _run_claimed(self, job_id: str, index: int, attempt: int,
                     token: str) -> tuple[ChunkOutcome, list[ImageResult]]:
        try:
            results = self._results_of(job_id, index, attempt)
        except Exception as exc:
            self.store.record_chunk_error(job_id, index, reason_of(exc))
            raise
        if results is None:
            return ChunkOutcome.CANCELLED, []
        if isinstance(results, ChunkOutcome):
            return results, []
        self.results.write_chunk_results(job_id, index, results)
        counts = outcome_counts(results)
        return self.store.complete_chunk(job_id, index, token, *counts), results

    def _results_of(self, job_id: str, index: int,
                    attempt: int) -> list[ImageResult] | ChunkOutcome | None:
        """The chunk's results; None when cancelled; FAILED when it failed the whole job."""
        record = self.store.load(job_id)
        refs = self.results.read_chunk_inputs(job_id, index)
        first = index * record.chunk_size
        if attempt > self.policy.max_attempts:
            return self._give_up(job_id, index, refs, first)
        try:
            return self._classify_chunk(record, refs, first)
        except ModelNotFound as exc:
            if record.requested_version is not None or record.requested_label:
                self._fail_job(record, exc)
                return ChunkOutcome.FAILED
            if record.resolved_version is None:
                raise  # not even "latest" resolved: transient, the chunk runs again later
        # The version the job started on was unloaded (newer ones were published): go on with
        # the latest rather than fail an archive half-way; every result names its version.
        log.warning("job %s: version %s went away; continuing on the latest", job_id,
                    record.resolved_version)
        self.store.unpin_version(job_id, record.resolved_version)
        return self._classify_chunk(self.store.load(job_id), refs, first)

    def _give_up(self, job_id: str, index: int, refs: Sequence[ImageRef],
                 first: int) -> list[ImageResult]:
        """The chunk failed every attempt (it may kill its worker): fail its images, with the
        reason of the last failure, rather than stall the job."""
        reason = self.store.chunk_error(job_id, index) or "WORKER_LOST"
        error = InternalError(f"the chunk failed {self.policy.max_attempts} times ({reason})",
                              "CHUNK_ATTEMPTS_EXHAUSTED")
        log.error("chunk %s/%d failed %d times (%s); its images are recorded as failed",
                  job_id, index, self.policy.max_attempts, reason)
        return [ImageResult.failed(first + i, ref.reference, error) for i, ref in enumerate(refs)]

    def _fail_job(self, record: JobRecord, error: ModelNotFound) -> None:
        """The version the client pinned does not exist (or went away): the job cannot run."""
        log.error("batch job %s failed: %s", record.job_id, error)
        self.store.finish(record.job_id, JobState.FAILED, error.message)

    def _classify_chunk(self, record: JobRecord, refs: Sequence[ImageRef],
                        first: int) -> list[ImageResult] | None:
        """Classify in batches, `pipeline_depth` at a time: while the model runs one batch,
        another thread reads and decodes the next (Pillow and TensorFlow both release the GIL),
        which is what keeps a worker near the model's raw throughput."""
        ref = self._model_ref(record)
        roots = InputRoots([*self.roots.roots, self.results.inputs_dir(record.job_id)])
        size = self.policy.images_per_call
        in_flight: deque[Future[list[ImageResult]]] = deque()
        results: list[ImageResult] = []
        try:
            for start in range(0, len(refs), size):
                if self.store.state(record.job_id) not in (JobState.RUNNING, JobState.QUEUED):
                    return None  # cancelled (or failed): stop between batches
                in_flight.append(self.pool.submit(self._classify_batch,
                                                  refs[start:start + size], first + start, ref,
                                                  roots))
                if len(in_flight) >= self.policy.pipeline_depth:
                    results.extend(in_flight.popleft().result())
            while in_flight:
                results.extend(in_flight.popleft().result())
            return results
        finally:
            # Nothing of this chunk may outlive it; bounded, in case rq's timeout fired on a hung
            # model call, which no thread can interrupt.
            wait(in_flight, timeout=self.policy.classify_timeout_s)

    def _model_ref(self, record: JobRecord) -> ModelRef:
        """One version for the whole job: the pinned one, or the first chunk's resolution."""
        if record.resolved_version is not None:
            return ModelRef(record.model_name, version=record.resolved_version)
        wanted = ModelRef(record.model_name, label=record.requested_label or None)
        info = self._retrying(lambda: self.classifier.describe(wanted,
                                                               self.policy.classify_timeout_s))
        return ModelRef(record.model_name, version=self.store.pin_version(record.job_id,
                                                                          info.version))

    def _classify_batch(self, refs: Sequence[ImageRef], first: int, ref: ModelRef,
                        roots: InputRoots) -> list[ImageResult]:
        results: dict[int, ImageResult] = {}
        images: dict[int, bytes] = {}
        contexts: list[PatientContext | None] = []
        for offset, image_ref in enumerate(refs):
            try:  # a row's bad context fails that row, as a bad file does (the job goes on)
                context = None if image_ref.context is None else image_ref.context.parse()
                images[offset] = read_image(image_ref, roots, self.policy.limits.max_bytes)
                contexts.append(context)
            except DermserveError as exc:
                results[offset] = ImageResult.failed(first + offset, image_ref.reference, exc)
        if images:
            answers = self._retrying(lambda: self.classifier.classify_many(
                list(images.values()), ref, None, self.policy.classify_timeout_s, contexts))
            for offset, answer in zip(images, answers, strict=True):
                results[offset] = to_result(first + offset, refs[offset].reference, answer)
        return [results[offset] for offset in range(len(refs))]

    def _retrying(self, call: Callable[[], T]) -> T:
        """Retry transient backend errors with exponential backoff, a bounded number of times;
        the last failure propagates and the chunk runs again later (or gives up)."""
        for retry in range(self.policy.backend_retries):
            try:
                return call()
            except TRANSIENT as exc:
                delay = min(self.policy.backoff_cap_s, self.policy.backoff_base_s * 2 ** retry)
                log.warning("backend %s; retrying in %.1f s", exc.reason, delay)
                self.observer.backend_retried()
                time.sleep(delay)
        return call()

    # --- the end of a job ------------------------------------------------------------------------
    def finalize(self, job_id: str) -> str:
        """Write the exports and end the job (`final_state`); safe to run twice or
        concurrently."""
        token = self.token()
        if not self.store.take_lease(job_id, FINAL_LEASE, token, self.policy.lease_ttl_s):
            return "BUSY"
        with LeaseKeeper(self.store, job_id, FINAL_LEASE, token, self.policy.lease_ttl_s):
            record = self.store.load(job_id)
            if record.state.terminal:
                return record.state.value
            states = self.store.chunk_states(job_id)
            done = [index for index, state in states.items() if state is ChunkState.DONE]
            self.results.export(job_id, done)
            state, error = final_state(record)
            outcome = self.store.finish(job_id, state, error)
        log.info("batch job %s finished %s: %s", job_id, state.value, outcome)
        return outcome


def final_state(record: JobRecord) -> tuple[JobState, str]:
    """SUCCEEDED when at least one image has a result, even if others failed (failed_images
    counts them); FAILED with ALL_IMAGES_FAILED when none has: a job that classified nothing
    did not succeed. The per-image reasons stay in the results either way."""
    if record.total > 0 and record.failed >= record.total:
        return JobState.FAILED, (f"{ALL_IMAGES_FAILED}: every one of the {record.total} images "
                                 "failed; the job's results give each image's reason")
    return JobState.SUCCEEDED, ""


def read_image(ref: ImageRef, roots: InputRoots, max_bytes: int) -> bytes:
    """The file's bytes, or a per-image error with a stable reason."""
    try:
        return open_checked(ref, roots, max_bytes)
    except FileNotFoundError as exc:
        raise InvalidRequest("the image file does not exist", "FILE_NOT_FOUND") from exc
    except OSError as exc:
        raise InvalidRequest("the image file cannot be read", "FILE_UNREADABLE") from exc


def to_result(index: int, reference: str, answer: Prediction | DermserveError) -> ImageResult:
    if isinstance(answer, DermserveError):
        return ImageResult.failed(index, reference, answer)
    return ImageResult.classified(index, reference, answer)


def outcome_counts(results: Sequence[ImageResult]) -> tuple[int, int, int]:
    """(done, failed, abstained): every image is done; failed and abstained are subsets."""
    failed = sum(1 for result in results if result.error is not None)
    abstained = sum(1 for result in results if result.abstained)
    return len(results), failed, abstained


def reason_of(error: BaseException) -> str:
    return error.reason if isinstance(error, DermserveError) else type(error).__name__


CURRENT_RUNNER: ContextVar[ChunkRunner] = ContextVar("dermserve_chunk_runner")


def run_chunk(job_id: str, index: int, attempt: int) -> str:
    """rq entry point of one chunk (see the module docstring)."""
    return CURRENT_RUNNER.get().run(job_id, index, attempt).value


def run_finalize(job_id: str) -> str:
    """rq entry point of a job's exports, queued by the reaper when a worker died before them."""
    return CURRENT_RUNNER.get().finalize(job_id)
