"""Assemble and run the gRPC front service: backend, classifier, servicer, interceptors, health,
reflection, metrics, and a graceful SIGTERM.

`create_server(settings, backend)` builds a ready-to-start server bound to `settings.listen_address`
(port 0 picks a free one) and returns it with its port; `serve(settings)` runs it until SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dermserve.core.backends.base import Backend, ModelRef
from dermserve.core.backends.factory import open_backend
from dermserve.core.batching import MicroBatcher
from dermserve.core.classifier import Classifier, require_config
from dermserve.core.errors import DermserveError
from dermserve.core.readiness import write_ready_file
from dermserve.service.auth import (
    ReloadingTokens,
    TokenAuthInterceptor,
    TokenChecker,
    TokenGrant,
    TokenTable,
    server_credentials,
)
from dermserve.service.classify_stream import StreamDrain
from dermserve.service.metrics import Metrics, start_exporter
from dermserve.service.servicer import LesionClassifierServicer
from dermserve.service.settings import SecuritySettings, Settings
from dermserve.service.status import ErrorMappingInterceptor
from dermserve.service.streams import StreamLimiter
from dermserve.v1 import lesion_classifier_pb2, lesion_classifier_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = lesion_classifier_pb2.DESCRIPTOR.services_by_name["LesionClassifier"].full_name
MAX_SEND_MESSAGE_BYTES = 4 * 1024 * 1024  # bytes; responses are a few hundred bytes
STOP_JOIN_TIMEOUT_S = 5.0  # seconds to wait for the health monitor to notice a stop
HEALTH_ONLY_WORKERS = 4  # threads; probes are tiny and a few per period

ServiceAdder = Callable[[grpc.Server], None]
"""Registers one more service on the server (e.g. the batch jobs API); passed with its full name,
which health and reflection then list too."""


def make_backend(settings: Settings, metrics: Metrics | None = None) -> Backend:
    """The backend the settings name (core/backends/factory.py), started, and wrapped in a
    MicroBatcher when enabled. Health stays NOT_SERVING until a version answers."""
    batching = settings.batching
    backend = open_backend(settings, events=metrics.model_event if metrics else None,
                           largest_batch=batching.max_size if batching.enabled else 1)
    if not batching.enabled:
        return backend
    return MicroBatcher(backend, batching.max_size, batching.max_wait_ms, batching.workers,
                        batching.queue_limit, observer=metrics)


class HealthMonitor:
    """Keeps grpc.health.v1 truthful: SERVING only while the latest version resolves and
    answers a probe image; NOT_SERVING otherwise, and for good once shutdown begins."""

    def __init__(self, health_servicer: health.HealthServicer, backend: Backend, model_name: str,
                 services: Sequence[str], interval_s: float, probe_timeout_s: float,
                 on_change: Callable[[int | None], None] | None = None) -> None:
        self.health = health_servicer
        self.backend = backend
        self.model_name = model_name
        self.services = ("", *services)
        self.interval_s = interval_s
        # The backend's own deadline, not the probe period: under full load the probe waits its
        # turn behind real batches, and health must not flap because the service is busy.
        self.probe_timeout_s = probe_timeout_s
        self.on_change = on_change
        self.serving_version: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
        self._set(None, force=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Report NOT_SERVING from now on (load balancers drain us) and stop probing."""
        self._stop.set()
        self.health.enter_graceful_shutdown()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_TIMEOUT_S)
        if self.on_change is not None:
            self.on_change(None)

    def probe(self) -> int | None:
        """The version that answered a blank image now, or None."""
        try:
            version = self.backend.resolve(ModelRef(self.model_name), self.probe_timeout_s)
            spec = require_config(version).input
            blank = np.zeros((1, spec.height, spec.width, 3), np.uint8)
            pinned = ModelRef(self.model_name, version=version.version)
            self.backend.predict(pinned, blank, self.probe_timeout_s)
            return version.version
        except DermserveError as exc:
            log.debug("health probe failed: %s", exc)
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._set(self.probe())
            self._stop.wait(self.interval_s)

    def _set(self, version: int | None, force: bool = False) -> None:
        if version == self.serving_version and not force:
            return
        if self._stop.is_set():
            return
        status = (health_pb2.HealthCheckResponse.SERVING if version is not None
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in self.services:
            self.health.set(service, status)
        if version is not None or self.serving_version is not None:
            log.info("health: %s (model version %s)",
                     "SERVING" if version is not None else "NOT_SERVING", version)
        self.serving_version = version
        if self.on_change is not None:
            self.on_change(version)


class FrontServer:
    """The gRPC server with its health monitor and, optionally, a plaintext health-only server
    (`health_port`, 0 when off); start() and stop(grace) drive them all."""

    def __init__(self, server: grpc.Server, monitor: HealthMonitor,
                 stream_pool: ThreadPoolExecutor, drain: StreamDrain,
                 health_only: tuple[grpc.Server, int] | None = None) -> None:
        self.grpc_server = server
        self.monitor = monitor
        self.stream_pool = stream_pool
        self.drain = drain
        self.health_server: grpc.Server | None = health_only[0] if health_only else None
        self.health_port = health_only[1] if health_only else 0

    def start(self) -> None:
        self.grpc_server.start()
        if self.health_server is not None:
            self.health_server.start()
        self.monitor.start()

    def stop(self, grace_s: float | None) -> None:
        """Turn health NOT_SERVING, stop reading open streams, refuse new calls, and let
        in-flight ones (and the images streams accepted) finish within grace_s."""
        self.monitor.stop()
        self.drain.begin()
        self.grpc_server.stop(grace_s).wait()
        if self.health_server is not None:
            self.health_server.stop(None)
        self.stream_pool.shutdown(wait=False, cancel_futures=True)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(settings: Settings, backend: Backend, metrics: Metrics | None = None,
                  extra_services: Sequence[tuple[str, ServiceAdder]] = ()
                  ) -> tuple[FrontServer, int]:
    """Build the server on `backend` (not started); returns it and the port it is bound to."""
    server, port = bound_server(settings, metrics)
    return assemble(server, settings, backend, metrics, extra_services), port


def bound_server(settings: Settings, metrics: Metrics | None) -> tuple[grpc.Server, int]:
    """A gRPC server bound to `settings.listen_address`, no service added yet: `serve` binds
    before it loads TensorFlow and the model, so a taken port fails in a second, not a minute.
    PortTaken when the address cannot be bound."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
        interceptors=interceptors(settings, metrics),
        options=server_options(settings), maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    try:
        port = bind(server, settings)
    except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
        raise PortTaken(settings.listen_address) from exc
    if port == 0:  # older grpcio reports a failed bind as port 0
        raise PortTaken(settings.listen_address)
    return server, port


class PortTaken(Exception):
    """The listen address is in use (another process holds the port) or not local."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}: the port is taken by another process "
                         "(or the address is not one of this machine's)")


def assemble(server: grpc.Server, settings: Settings, backend: Backend,
             metrics: Metrics | None = None,
             extra_services: Sequence[tuple[str, ServiceAdder]] = (),
             on_change: Callable[[int | None], None] | None = None) -> FrontServer:
    """Add the services over `backend` to a bound `server`; `on_change` hears each health
    change (the serving version, or None) besides the metrics."""
    classifier = Classifier.from_settings(backend, settings, observer=metrics)
    stream_pool = ThreadPoolExecutor(max_workers=settings.grpc_workers,
                                     thread_name_prefix="classify-stream")
    drain = StreamDrain()
    lesion_classifier_pb2_grpc.add_LesionClassifierServicer_to_server(
        LesionClassifierServicer(classifier, settings.backend_timeout_s, stream_pool, drain,
                                 metrics), server)
    names = [SERVICE_NAME]
    for name, add in extra_services:
        add(server)
        names.append(name)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    listeners = [f for f in (metrics.set_serving if metrics else None, on_change) if f]

    def changed(version: int | None) -> None:
        for listener in listeners:
            listener(version)

    monitor = HealthMonitor(health_servicer, backend, settings.model_name, names,
                            settings.health_interval_s, settings.backend_timeout_s,
                            on_change=changed)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    health_only = (health_only_server(health_servicer, settings)
                   if settings.health_listen_address else None)
    return FrontServer(server, monitor, stream_pool, drain, health_only)


def interceptors(settings: Settings, metrics: Metrics | None) -> list[Any]:
    """Error mapping outermost, so that auth failures and stream refusals are mapped and counted
    like any other; the stream limiter inside auth, so that it knows checked tokens only."""
    chain: list[Any] = [ErrorMappingInterceptor(metrics)]
    tokens = token_table(settings.security)
    if tokens is not None:
        chain.append(TokenAuthInterceptor(tokens))
    chain.append(StreamLimiter(settings.streams, settings.stream_limit))
    return chain


def token_table(security: SecuritySettings) -> TokenChecker | None:
    """The accepted tokens; a tokens file is re-read when it changes (rotation, no restart)."""
    extra = [TokenGrant(security.auth_token)] if security.auth_token else []
    if security.auth_tokens_file is not None:
        return ReloadingTokens(security.auth_tokens_file, security.reload_interval_s, extra)
    return TokenTable(extra) if extra else None


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        # Two servers on one port would split traffic silently; fail the second bind instead.
        ("grpc.so_reuseport", 0),
    ]


def health_only_server(servicer: health.HealthServicer,
                       settings: Settings) -> tuple[grpc.Server, int]:
    """A plaintext server with only grpc.health.v1, sharing the main server's statuses: kubelet
    gRPC probes cannot speak TLS, and nothing else may be reachable without it. Its Watch
    streams are limited as on the main port, since anyone who reaches it may open them."""
    server = grpc.server(ThreadPoolExecutor(max_workers=HEALTH_ONLY_WORKERS,
                                            thread_name_prefix="health"),
                         interceptors=[ErrorMappingInterceptor(),
                                       StreamLimiter(settings.streams, settings.stream_limit)],
                         options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server, server.add_insecure_port(settings.health_listen_address)


def bind(server: grpc.Server, settings: Settings) -> int:
    security = settings.security
    if security.tls_cert is not None and security.tls_key is not None:
        credentials = server_credentials(security.tls_cert, security.tls_key,
                                         security.tls_client_ca, security.reload_interval_s)
        return server.add_secure_port(settings.listen_address, credentials)
    return server.add_insecure_port(settings.listen_address)


def serve(settings: Settings, extra_services: Sequence[tuple[str, ServiceAdder]] = ()) -> None:
    """Run until SIGTERM or SIGINT, then drain for `grace_period_s` and close everything.
    `extra_services` (name, adder) are hosted on the same port (e.g. the batch jobs API).
    The port is bound first, before TensorFlow loads; a taken port exits 2 with one line."""
    metrics = Metrics()
    try:
        grpc_server, port = bound_server(settings, metrics)
    except PortTaken as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    exporter = start_exporter(metrics, settings.metrics_address, settings.metrics_port)
    backend = make_backend(settings, metrics)

    def announce(version: int | None) -> None:
        if version is not None:
            write_ready_file(settings.ready_file, port)

    server = assemble(grpc_server, settings, backend, metrics, extra_services, announce)
    stop = threading.Event()
    install_signal_handlers(stop)
    server.start()
    log.info("dermserve listening on %s (port %d), backend %s, model %s",
             settings.listen_address, port, settings.backend, settings.model_name)
    stop.wait()
    log.info("stopping: draining for up to %.0f s", settings.grace_period_s)
    server.stop(settings.grace_period_s)
    backend.close()
    if exporter is not None:
        exporter.shutdown()
    log.info("stopped")


def optional_services(settings: Settings) -> list[tuple[str, ServiceAdder]]:
    """Services hosted on the front's port besides Classify: BatchJobs, with `--batch-jobs on`
    (or `auto` and Redis given). That side needs Redis, never TensorFlow."""
    if not settings.hosts_batch_jobs:
        return []
    from dermserve.batch.jobs import JobService
    from dermserve.service.batch_jobs import batch_jobs_service

    return [batch_jobs_service(JobService.from_settings(settings))]


def install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
