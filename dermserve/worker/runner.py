"""The worker process: load the model once, then run chunks from rq until told to stop.

Why rq's SimpleWorker (BatchWorker below) and not the forking Worker: the forking Worker forks a
"work horse" per job. A child forked from a process whose TensorFlow runtime has started its
thread pools inherits locked mutexes and no threads, and hangs in its first TF call; forking
before loading TF instead would load the model again for every chunk (seconds each). SimpleWorker
runs each job in this process, with the model loaded once. What the horse gave us, we rebuild:
a crash or SIGKILL of this process is recovered by chunk leases and the reaper (worker/reaper.py),
and a chunk stuck in a TF call is ended by rq's job timeout (SIGALRM in this process).

Redis going away: our commands retry with backoff inside redis-py (batch/store.py); rq's dequeue
loop retries by itself; and if rq's loop still gives up (it quits on some errors), `serve`
starts a fresh rq worker after a backoff, keeping the loaded model.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from rq import Queue, SimpleWorker
from rq.job import Job

from dermserve.batch.queues import SERIALIZER, ChunkJob, ChunkQueues
from dermserve.batch.references import InputRoots
from dermserve.batch.results import ResultStore
from dermserve.batch.store import JobStore, connect
from dermserve.core.backends.base import Backend, ModelRef
from dermserve.core.backends.factory import open_backend
from dermserve.core.classifier import Classifier
from dermserve.core.errors import DermserveError
from dermserve.core.metrics import ModelMetrics
from dermserve.core.observe import Observer
from dermserve.core.readiness import write_ready_file
from dermserve.worker import defaults
from dermserve.worker.chunks import CURRENT_RUNNER, ChunkPolicy, ChunkRunner
from dermserve.worker.metrics import BatchStateCollector, WorkerMetrics
from dermserve.worker.reaper import Reaper
from dermserve.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class BatchWorker(SimpleWorker):
    """rq's SimpleWorker, with this process's ChunkRunner bound around each job."""

    def __init__(self, queues: list[Queue], runner: ChunkRunner, stopping: threading.Event,
                 **kwargs: Any) -> None:
        super().__init__(queues, **kwargs)
        self.runner = runner
        self.stopping = stopping

    def execute_job(self, job: Job, queue: Queue) -> None:
        token = CURRENT_RUNNER.set(self.runner)
        self.runner.observer.busy(True)
        try:
            super().execute_job(job, queue)
        finally:
            self.runner.observer.busy(False)
            CURRENT_RUNNER.reset(token)

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: finish the running chunk, then leave (and do not restart rq)."""
        self.stopping.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def build_classifier(settings: WorkerSettings, backend: Backend,
                     observer: Observer | None = None) -> Classifier:
    """The same classifier core as the front's (Classifier.from_settings): a chunk's batches
    decode in parallel (pipeline_depth), and each image holds its share of the decode budget
    until it is the model input."""
    return Classifier.from_settings(backend, settings, observer)


def wait_for_model(classifier: Classifier, timeout_s: float) -> None:
    """Start taking chunks only once a version answers, so none fails for want of a model."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = classifier.describe(ModelRef(classifier.model_name))
            log.info("model %s version %d ready", info.name, info.version)
            return
        except DermserveError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for a model version: %s", exc)
            time.sleep(1.0)


InsideChunk = Callable[[JobStore], Callable[[str, int], None]]
"""Builds a hook that a chunk's runner calls once it holds a chunk's lease (job id, chunk index);
only a test passes one (tests/worker/hold.py), to kill a worker at a known point."""


class WorkerProcess:
    """Everything one worker process holds: clients, the runner, the reaper, the metrics."""

    def __init__(self, settings: WorkerSettings, classifier: Classifier,
                 registry: CollectorRegistry | None = None,
                 inside_chunk: InsideChunk | None = None) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.store = JobStore.from_settings(connect(settings), settings)
        self.rq_connection = connect(settings, decode_responses=False)
        self.queues = ChunkQueues.from_settings(self.rq_connection, settings)
        # The model metrics (decode, predictions...) register here too when run_worker made them.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.registry.register(BatchStateCollector(self.store, self.queues))
        self.runner = ChunkRunner(self.store, ResultStore(settings.batch_output_dir),
                                  self.queues, classifier, InputRoots(settings.input_roots),
                                  ChunkPolicy.from_settings(settings), self.metrics,
                                  name=f"{socket.gethostname()}-{os.getpid()}",
                                  inside_chunk=(inside_chunk(self.store)
                                                if inside_chunk is not None else None))
        self.reaper = Reaper(self.store, self.queues, settings.reap_interval_s,
                             settings.reap_grace_s, settings.max_chunk_attempts)

    def serve(self) -> None:
        if self.settings.worker_metrics_port:
            start_http_server(self.settings.worker_metrics_port,
                              self.settings.worker_metrics_address, registry=self.registry)
        self.reaper.start()
        write_ready_file(self.settings.ready_file, self.settings.worker_metrics_port)
        try:
            self._loop()
        finally:
            self.reaper.stop()
            self.runner.close()

    def _loop(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            worked = self._work_once()
            if self.settings.burst or self.stopping.is_set():
                return
            log.warning("rq loop ended (Redis away?); restarting it in %.0f s", backoff)
            self.stopping.wait(backoff)
            backoff = 1.0 if worked else min(backoff * 2, defaults.DEFAULT_RESTART_BACKOFF_CAP_S)

    def _work_once(self) -> bool:
        try:
            rq_worker = BatchWorker(self.queues.listen_order(), self.runner, self.stopping,
                                    connection=self.rq_connection, job_class=ChunkJob,
                                    serializer=SERIALIZER,
                                    worker_ttl=defaults.DEFAULT_RQ_WORKER_TTL_S)
            return bool(rq_worker.work(burst=self.settings.burst, logging_level="INFO"))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("Redis unreachable: %s", exc)
            return False


def start_worker(settings: WorkerSettings, inside_chunk: InsideChunk | None = None
                 ) -> tuple[WorkerProcess, Backend]:
    """The worker process with its backend open and a model version answering; its registry
    holds the same decode, prediction and model-event metrics as the front's, and its own."""
    registry = CollectorRegistry()
    model_metrics = ModelMetrics(registry)
    backend = open_backend(settings, events=model_metrics.model_event, block=True,
                           largest_batch=settings.images_per_call)
    try:
        classifier = build_classifier(settings, backend, model_metrics)
        wait_for_model(classifier, settings.model_ready_timeout_s)
        return WorkerProcess(settings, classifier, registry, inside_chunk), backend
    except BaseException:
        backend.close()
        raise


def run_worker(settings: WorkerSettings, inside_chunk: InsideChunk | None = None) -> int:
    """The `dermserve-worker` program (a test's entry adds `inside_chunk`: tests/worker/hold.py)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    process, backend = start_worker(settings, inside_chunk)
    try:
        process.serve()
    finally:
        backend.close()
    return 0
