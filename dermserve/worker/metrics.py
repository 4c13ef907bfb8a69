"""Prometheus metrics of batch jobs and workers.

Per worker process (WorkerMetrics, a ChunkObserver):
    dermserve_batch_images_total{outcome}        classified | abstained | failed
    dermserve_batch_chunks_total{outcome}        OK | LAST | DUPLICATE | CANCELLED | FAILED
    dermserve_batch_chunk_seconds                histogram of one chunk's run
    dermserve_batch_backend_retries_total        transient backend errors retried
    dermserve_worker_busy                        1 while a chunk runs, 0 while idle
Read from Redis at scrape time (BatchStateCollector; the front service may register it too):
    dermserve_batch_jobs{state}                  jobs QUEUED or RUNNING now
    dermserve_batch_jobs_finished_total{state}   jobs that ended SUCCEEDED | FAILED | CANCELLED
    dermserve_batch_queue_depth{priority}        rq jobs waiting per priority queue
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dermserve.batch.queues import ChunkQueues
from dermserve.batch.records import ChunkOutcome, JobState
from dermserve.batch.results import ImageResult
from dermserve.batch.store import JobStore

log = logging.getLogger(__name__)

CHUNK_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
"""Seconds; a 64-image chunk takes ~1-2 s on CPU, a TF Serving round trip adds little."""


class WorkerMetrics:
    """The worker's own counters, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Counter("dermserve_batch_images_total", "Batch images by outcome.",
                              ["outcome"], registry=registry)
        self.chunks = Counter("dermserve_batch_chunks_total", "Chunk runs by outcome.",
                              ["outcome"], registry=registry)
        self.chunk_seconds = Histogram("dermserve_batch_chunk_seconds",
                                       "Seconds one chunk took.", registry=registry,
                                       buckets=CHUNK_SECONDS_BUCKETS)
        self.retries = Counter("dermserve_batch_backend_retries_total",
                               "Transient backend errors retried.", registry=registry)
        self.busy_gauge = Gauge("dermserve_worker_busy", "1 while a chunk runs, 0 while idle.",
                                registry=registry)

    def chunk_finished(self, outcome: ChunkOutcome, seconds: float,
                       results: Sequence[ImageResult]) -> None:
        self.chunks.labels(outcome.value).inc()
        self.chunk_seconds.observe(seconds)
        if not outcome.counted:
            return  # a duplicate or cancelled run counted nothing
        for result in results:
            self.images.labels(image_outcome(result)).inc()

    def backend_retried(self) -> None:
        self.retries.inc()

    def busy(self, busy: bool) -> None:
        self.busy_gauge.set(1 if busy else 0)


def image_outcome(result: ImageResult) -> str:
    if result.error is not None:
        return "failed"
    return "abstained" if result.abstained else "classified"


class BatchStateCollector(Collector):
    """Job and queue gauges read from Redis when Prometheus scrapes."""

    def __init__(self, store: JobStore, queues: ChunkQueues) -> None:
        self.store = store
        self.queues = queues

    def describe(self) -> list[Metric]:
        return []  # values come from Redis at collect time only

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("metrics: Redis unreachable (%s)", exc)

    def _collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily("dermserve_batch_jobs", "Batch jobs not yet finished.",
                                   labels=["state"])
        counts = {JobState.QUEUED.value: 0, JobState.RUNNING.value: 0}
        for job_id in self.store.active_jobs():
            current = self.store.state(job_id)
            if current is not None and current.value in counts:
                counts[current.value] += 1
        for name, count in counts.items():
            active.add_metric([name], count)
        yield active
        finished = CounterMetricFamily("dermserve_batch_jobs_finished",
                                       "Batch jobs that reached a terminal state.",
                                       labels=["state"])
        for name, count in sorted(self.store.finished_counts().items()):
            finished.add_metric([name], count)
        yield finished
        depth = GaugeMetricFamily("dermserve_batch_queue_depth",
                                  "Chunks waiting in the rq queue.", labels=["priority"])
        for priority, count in self.queues.depth().items():
            depth.add_metric([priority.value], count)
        yield depth
