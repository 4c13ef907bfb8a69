"""Dynamic micro-batching: concurrent predict calls for the same model version become one
backend call, so throughput under concurrency approaches the model's batch throughput.

`MicroBatcher` wraps any Backend and is one itself. Each dispatcher thread takes the oldest
waiting call and every queued call for the same version, up to `max_batch_size` images, sends
one batch and hands each caller its rows. A backend error reaches every caller of that batch.

How long a batch waits for company is adaptive, capped by `max_wait_ms`: it waits only until as
many images are queued as the previous batch for that version had. A lone caller (previous batch
of one) never waits; synchronous clients that all come back after a batch (a burst) are gathered
into one batch instead of being split into a batch of one and a batch of the rest; calls that
queue while the model is busy form the next batch at once. `max_wait_ms` = 0 is pure greedy.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dermserve.core import defaults
from dermserve.core.backends.base import Backend, BatchOutput, ExplainOutput, ModelRef, VersionInfo
from dermserve.core.context import ContextBatch, context_or_neutral
from dermserve.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    DermserveError,
    InternalError,
    ResourceExhausted,
)
from dermserve.core.observe import NullObserver, Observer

log = logging.getLogger(__name__)

BatchKey = tuple[str, int | None, str | None]
CLOSE_JOIN_TIMEOUT_S = 5.0  # seconds to wait for a dispatcher to finish its last batch


@dataclass(eq=False)
class Pending:
    """One caller's images waiting for a batch."""

    key: BatchKey
    ref: ModelRef
    images: np.ndarray
    expires: float | None
    context: ContextBatch | None = None  # one row per image; None: the caller sent none
    done: threading.Event = field(default_factory=threading.Event)
    output: BatchOutput | None = None
    error: DermserveError | None = None
    abandoned: bool = False

    def finish(self, output: BatchOutput | None, error: DermserveError | None) -> None:
        self.output, self.error = output, error
        self.done.set()


class MicroBatcher:
    """A Backend that merges concurrent predict calls for the same version into batches.
    It owns the wrapped backend: close() closes both."""

    def __init__(self, backend: Backend,
                 max_batch_size: int = defaults.DEFAULT_BATCH_MAX_SIZE,
                 max_wait_ms: float = defaults.DEFAULT_BATCH_MAX_WAIT_MS,
                 workers: int = defaults.DEFAULT_BATCH_WORKERS,
                 queue_limit: int = defaults.DEFAULT_BATCH_QUEUE_LIMIT,
                 observer: Observer | None = None) -> None:
        if max_batch_size < 1 or workers < 1 or queue_limit < 1 or max_wait_ms < 0:
            raise ValueError("batch size, workers and queue limit must be positive")
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self.observer: Observer = observer or NullObserver()
        self._cond = threading.Condition()
        self._queue: deque[Pending] = deque()
        self._queued_images = 0
        self._expected: dict[BatchKey, int] = {}  # images in the previous batch, per version
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"microbatch-{index}",
                                          daemon=True) for index in range(workers)]
        for thread in self._threads:
            thread.start()

    # --- Backend -------------------------------------------------------------------------------
    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        return self.backend.resolve(ref, timeout)

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        return self.backend.list_versions(name, timeout)

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None,
                context: ContextBatch | None = None) -> ExplainOutput:
        # Not batched: explanations are rare and each runs a backward pass of its own.
        return self.backend.explain(ref, images, class_indices, timeout, context)

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        pending = self._submit(ref, images, timeout, context)
        if not pending.done.wait(timeout):
            with self._cond:
                pending.abandoned = True
            raise BackendTimeout("the model did not answer within the deadline")
        if pending.error is not None:
            # A copy per caller: one exception object raised in many threads would share a
            # traceback.
            raise copy.copy(pending.error) from pending.error
        assert pending.output is not None  # finish() sets one or the other
        return pending.output

    def close(self) -> None:
        """Finish what is queued, stop the dispatchers, then close the wrapped backend."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(CLOSE_JOIN_TIMEOUT_S)
        self.backend.close()

    # --- queue ---------------------------------------------------------------------------------
    def _submit(self, ref: ModelRef, images: np.ndarray, timeout: float | None,
                context: ContextBatch | None) -> Pending:
        expires = None if timeout is None else time.monotonic() + timeout
        pending = Pending((ref.name, ref.version, ref.label), ref, images, expires, context)
        with self._cond:
            if self._closed:
                raise BackendUnavailable("the service is shutting down", "SHUTTING_DOWN")
            if self._queued_images + len(images) > self.queue_limit:
                raise ResourceExhausted(f"more than {self.queue_limit} images are waiting for "
                                        "the model", "QUEUE_FULL")
            self._queue.append(pending)
            self._queued_images += len(images)
            self._cond.notify()
        return pending

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            if batch:
                self._execute(batch)

    def _take_batch(self) -> list[Pending] | None:
        """The next batch; [] when the candidates vanished meanwhile; None once closed and empty."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            key = self._queue[0].key
            if self.max_wait_s > 0:
                self._wait_for_company(key, self._expected.get(key, 1))
            batch = self._pop(key)
            if batch:
                self._expected[key] = min(self.max_batch_size,
                                          sum(len(item.images) for item in batch))
            return batch

    def _wait_for_company(self, key: BatchKey, expected: int) -> None:
        """Wait (at most max_wait) until `expected` images for `key` are queued."""
        until = time.monotonic() + self.max_wait_s
        while self._count(key) < expected and not self._closed:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _count(self, key: BatchKey) -> int:
        return sum(len(item.images) for item in self._queue if item.key == key)

    def _pop(self, key: BatchKey) -> list[Pending]:
        """Take queued calls for `key`, oldest first, up to max_batch_size images (a single call
        larger than that goes alone); drop calls whose caller gave up."""
        batch: list[Pending] = []
        size = 0
        kept: deque[Pending] = deque()
        for item in self._queue:
            fits = not batch or size + len(item.images) <= self.max_batch_size
            if item.key != key or not fits:
                kept.append(item)
                continue
            self._queued_images -= len(item.images)
            if not item.abandoned:
                batch.append(item)
                size += len(item.images)
        self._queue = kept
        return batch

    # --- dispatch ------------------------------------------------------------------------------
    def _execute(self, batch: list[Pending]) -> None:
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate(
                [item.images for item in batch])
            self.observer.batch_formed(len(images))
            output = self.backend.predict(batch[0].ref, images, batch_timeout(batch),
                                          batch_context(batch))
            check_rows(output, len(images))
        except DermserveError as exc:
            fail_all(batch, exc)
            return
        except Exception:  # a bug in a backend must not kill the dispatcher
            log.exception("model backend failed on a batch of %d calls", len(batch))
            fail_all(batch, InternalError("the model backend failed"))
            return
        split(batch, output)


def batch_context(batch: list[Pending]) -> ContextBatch | None:
    """The batch's context rows, a caller without context getting the neutral rows; None when
    no caller sent any."""
    if all(item.context is None for item in batch):
        return None
    return ContextBatch.joined([context_or_neutral(item.context, len(item.images))
                                for item in batch])


def batch_timeout(batch: list[Pending]) -> float | None:
    """The latest deadline in the batch, so that no caller is cut short by another's."""
    if any(item.expires is None for item in batch):
        return None
    latest = max(item.expires for item in batch if item.expires is not None)
    return max(0.0, latest - time.monotonic())


def check_rows(output: BatchOutput, expected: int) -> None:
    if len(output.probabilities) != expected or len(output.ood_scores) != expected:
        raise InternalError(f"the backend returned {len(output.probabilities)} rows for "
                            f"{expected} images")


def fail_all(batch: list[Pending], error: DermserveError) -> None:
    for item in batch:
        item.finish(None, error)


def split(batch: list[Pending], output: BatchOutput) -> None:
    offset = 0
    for item in batch:
        rows = slice(offset, offset + len(item.images))
        item.finish(BatchOutput(output.version, output.probabilities[rows],
                                output.ood_scores[rows]), None)
        offset = rows.stop
