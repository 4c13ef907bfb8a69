"""The rq queues chunks wait in: one per priority, listened to HIGH first.

rq carries only (job id, chunk index, attempt): a few bytes per chunk. The functions are named by
their import path, so the API process enqueues without importing the worker's code.

Redis is not trusted to name code: rq's default serializer is pickle, and its jobs name any
importable function, so anyone who could write to Redis could run code in the workers. Jobs are
therefore serialized as JSON (our arguments are strings and integers), and the workers run only
`ALLOWED_FUNCTIONS` (`ChunkJob`); anything else fails as an rq job, running nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from dermserve.batch.records import Priority
from dermserve.batch.settings import BatchApiSettings

RUN_CHUNK = "dermserve.worker.chunks.run_chunk"
RUN_FINALIZE = "dermserve.worker.chunks.run_finalize"
RQ_RESULT_TTL_S = 300  # seconds; nothing reads rq's return values, our counts live elsewhere
ALLOWED_FUNCTIONS = frozenset({RUN_CHUNK, RUN_FINALIZE})
SERIALIZER = JSONSerializer
LIVE_STATUSES = frozenset({"queued", "started", "deferred", "scheduled"})
"""rq job statuses that will still run (or are running): anything else needs re-enqueueing."""


class ChunkJob(Job):
    """An rq job that may only call one of ALLOWED_FUNCTIONS: whatever Redis says."""

    @property
    def func(self) -> Any:
        if self.func_name not in ALLOWED_FUNCTIONS:
            raise ValueError(f"rq job {self.id} names a function workers do not run")
        return super().func


def chunk_job_id(job_id: str, index: int, attempt: int) -> str:
    return f"{job_id}-{index}-{attempt}"


def finalize_job_id(job_id: str) -> str:
    return f"{job_id}-final"


class ChunkQueues:
    """Enqueues chunks and exports; tells whether an rq job is still alive."""

    def __init__(self, connection: redis.Redis, name: str, chunk_timeout_s: int,
                 failure_ttl_s: int) -> None:
        self.connection = connection
        self.queues = {priority: Queue(f"{name}-{priority.value}", connection=connection,
                                       serializer=SERIALIZER, job_class=ChunkJob)
                       for priority in Priority}
        self.chunk_timeout_s = chunk_timeout_s
        self.failure_ttl_s = failure_ttl_s

    @classmethod
    def from_settings(cls, connection: redis.Redis, settings: BatchApiSettings) -> ChunkQueues:
        return cls(connection, settings.queue_name, settings.chunk_timeout_s, settings.job_ttl_s)

    def listen_order(self) -> list[Queue]:
        return [self.queues[p] for p in (Priority.HIGH, Priority.NORMAL, Priority.LOW)]

    def enqueue_chunk(self, job_id: str, index: int, attempt: int, priority: Priority) -> None:
        self._enqueue(priority, RUN_CHUNK, chunk_job_id(job_id, index, attempt),
                      job_id, index, attempt)

    def enqueue_chunks(self, job_id: str, indexes: Iterable[int], priority: Priority) -> None:
        """First attempts of a new job's chunks, in one round trip."""
        queue = self.queues[priority]
        specs = [Queue.prepare_data(RUN_CHUNK, args=(job_id, index, 1),
                                    job_id=chunk_job_id(job_id, index, 1),
                                    timeout=self.chunk_timeout_s, result_ttl=RQ_RESULT_TTL_S,
                                    failure_ttl=self.failure_ttl_s)
                 for index in indexes]
        queue.enqueue_many(specs)

    def enqueue_finalize(self, job_id: str, priority: Priority) -> None:
        self._enqueue(priority, RUN_FINALIZE, finalize_job_id(job_id), job_id)

    def _enqueue(self, priority: Priority, func: str, rq_id: str, *args: object) -> None:
        self.queues[priority].enqueue(func, *args, job_id=rq_id, job_timeout=self.chunk_timeout_s,
                                      result_ttl=RQ_RESULT_TTL_S, failure_ttl=self.failure_ttl_s)

    def alive(self, rq_ids: list[str]) -> list[bool]:
        """Whether each rq job is queued or running (one pipelined read for all)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for rq_id in rq_ids:
                pipe.hget(Job.key_for(rq_id), "status")
            statuses = pipe.execute()
        return [_text(status) in LIVE_STATUSES for status in statuses]

    def depth(self) -> dict[Priority, int]:
        return {priority: queue.count for priority, queue in self.queues.items()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
