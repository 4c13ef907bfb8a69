"""Recovery of abandoned work: every worker runs a Reaper thread.

Every `reap_interval_s` it looks at the jobs still active and
- queues again a RUNNING chunk whose lease expired (its worker died: SIGKILL, OOM, lost node),
  with the next attempt number;
- queues again a PENDING chunk whose rq job is gone (lost with a Redis that restarted without its
  last writes, or failed before it could claim the chunk);
- queues the exports of a job whose chunks are all done but which never finished (its worker
  died between the last chunk and the exports).
The store's scripts make each step atomic, so two reapers never queue the same chunk twice, and
the chunk's own claim makes a duplicate harmless anyway. New jobs are left alone for
`reap_grace_s`, while their submission is still queueing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis

from dermserve.batch.queues import ChunkQueues, chunk_job_id, finalize_job_id
from dermserve.batch.records import ChunkState, JobRecord, JobState
from dermserve.batch.store import JobStore
from dermserve.core.errors import JobNotFound
from dermserve.worker.chunks import FINAL_LEASE
from dermserve.worker.defaults import DEFAULT_MAX_CHUNK_ATTEMPTS

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, store: JobStore, queues: ChunkQueues, interval_s: float,
                 grace_s: float, max_attempts: int = DEFAULT_MAX_CHUNK_ATTEMPTS) -> None:
        self.store = store
        self.queues = queues
        self.max_attempts = max_attempts
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="reaper")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.interval_s + 5)

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                self.reap_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("reaper: Redis unreachable (%s); trying again later", exc)
            except Exception:  # noqa: BLE001 - a reaper bug must not kill the worker
                log.exception("reaper pass failed")

    def reap_once(self) -> int:
        """One pass; returns how many things it queued again."""
        queued = 0
        for job_id in self.store.active_jobs():
            try:
                record = self.store.load(job_id)
            except JobNotFound:
                self.store.forget_active(job_id)
                continue
            if record.state.terminal or time.time() - record.created < self.grace_s:
                continue
            queued += self._reap_job(record)
        return queued

    def _reap_job(self, record: JobRecord) -> int:
        if record.chunks_done >= record.chunk_count:
            return self._reap_finalize(record)
        states = self.store.chunk_states(record.job_id)
        attempts = self.store.attempts(record.job_id)
        running = [i for i, state in states.items() if state is ChunkState.RUNNING]
        pending = [i for i, state in states.items() if state is ChunkState.PENDING]
        return self._reap_running(record, running) + self._reap_pending(record, pending, attempts)

    def _reap_running(self, record: JobRecord, indexes: list[int]) -> int:
        requeued = ((i, self.store.requeue_abandoned(record.job_id, i)) for i in indexes)
        return self._queue_again(record, requeued, "lost its worker")

    def _reap_pending(self, record: JobRecord, indexes: list[int],
                      attempts: dict[int, int]) -> int:
        ids = [chunk_job_id(record.job_id, i, attempts.get(i, 1)) for i in indexes]
        lost = [i for i, alive in zip(indexes, self.queues.alive(ids), strict=True) if not alive]
        requeued = ((i, self.store.requeue_pending(record.job_id, i, attempts.get(i, 1)))
                    for i in lost)
        return self._queue_again(record, requeued, "had no queued run")

    def _queue_again(self, record: JobRecord, requeued: Iterable[tuple[int, int | None]],
                     why: str) -> int:
        """Enqueue each chunk the store handed back (an attempt number, None when another reaper
        or the worker got there first), stopping at the first hopeless one. `requeued` is lazy,
        so no chunk is taken from the store after the job has failed."""
        queued = 0
        for index, attempt in requeued:
            if attempt is None:
                continue
            if self._hopeless(record, index, attempt):
                break
            log.warning("job %s chunk %d %s; queued again (attempt %d)", record.job_id, index,
                        why, attempt)
            self.queues.enqueue_chunk(record.job_id, index, attempt, record.priority)
            queued += 1
        return queued

    def _hopeless(self, record: JobRecord, index: int, attempt: int) -> bool:
        """Past its attempts, a chunk's run records its images as failed; when even that run
        failed (its inputs are unreadable, say), the job fails instead of looping forever."""
        if attempt <= self.max_attempts + 1:
            return False
        reason = self.store.chunk_error(record.job_id, index) or "WORKER_LOST"
        log.error("job %s: chunk %d failed %d runs (%s); failing the job", record.job_id, index,
                  attempt - 1, reason)
        self.store.finish(record.job_id, JobState.FAILED,
                          f"chunk {index} could not run ({reason})")
        return True

    def _reap_finalize(self, record: JobRecord) -> int:
        if self.store.lease_held(record.job_id, FINAL_LEASE):
            return 0
        if self.queues.alive([finalize_job_id(record.job_id)])[0]:
            return 0
        log.warning("job %s has every chunk done but no export; queueing it", record.job_id)
        self.queues.enqueue_finalize(record.job_id, record.priority)
        return 1
