"""Prometheus metrics of the front service, on their own registry (no module globals), served
over HTTP by `start_exporter`.

Names are an interface: deploy/'s alerts and dashboards use them.
  dermserve_requests_total{method,code}            RPCs by method (e.g. Classify) and status code,
                                                   health checks (grpc.health.v1) left out
  dermserve_request_latency_seconds{method}        whole-call latency (health checks left out)
  ... and the model path's (decode, rejections, model latency, predictions, abstentions, batch
  size, load events), defined in core/metrics.py, which the batch worker exports too
  dermserve_model_loaded{model_version}            1 for the version the health probe found serving
  dermserve_serving                                1 while health says SERVING, else 0
  dermserve_stream_images_pending                  images read from ClassifyStreams whose
                                                   answers gRPC has not taken yet
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dermserve.core.metrics import LATENCY_BUCKETS, ModelMetrics

log = logging.getLogger(__name__)

UNCOUNTED_SERVICE_PREFIX = "/grpc.health.v1."
"""Calls not counted in the request metrics: Kubernetes and `make run` probe health every few
seconds, and those probes would outnumber and hide the clients' calls (`dermserve_serving`
says what health says)."""


class Metrics(ModelMetrics):
    """Every metric of the front: the model path's (an Observer for the core), the calls' (a
    CallRecorder for the interceptor), and health's."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self._lock = threading.Lock()
        self._loaded_version: str | None = None
        self._define_request_metrics()
        self._define_health_metrics()

    def _define_request_metrics(self) -> None:
        reg = self.registry
        self.requests = Counter("dermserve_requests", "RPCs by method and status code.",
                                ["method", "code"], registry=reg)
        self.request_latency = Histogram("dermserve_request_latency_seconds",
                                         "Whole-call latency.", ["method"],
                                         buckets=LATENCY_BUCKETS, registry=reg)
        self.stream_pending = Gauge("dermserve_stream_images_pending",
                                    "Images read from ClassifyStreams whose answers gRPC has "
                                    "not taken yet.", registry=reg)

    def _define_health_metrics(self) -> None:
        reg = self.registry
        self.model_loaded = Gauge("dermserve_model_loaded",
                                  "1 for the model version the health probe found answering.",
                                  ["model_version"], registry=reg)
        self.serving = Gauge("dermserve_serving", "1 while health reports SERVING.",
                             registry=reg)

    # --- CallRecorder ---------------------------------------------------------------------------
    def call_finished(self, method: str, code: str, seconds: float) -> None:
        if method.startswith(UNCOUNTED_SERVICE_PREFIX):
            return
        short = method.rsplit("/", 1)[-1]
        self.requests.labels(short, code).inc()
        self.request_latency.labels(short).observe(seconds)

    def stream_images_pending(self, delta: int) -> None:
        self.stream_pending.inc(delta)

    # --- health ---------------------------------------------------------------------------------
    def set_serving(self, version: int | None) -> None:
        """Health changed: `version` answers now, or None when nothing does."""
        with self._lock:
            if self._loaded_version is not None:
                self.model_loaded.remove(self._loaded_version)
            self._loaded_version = None if version is None else str(version)
            if self._loaded_version is not None:
                self.model_loaded.labels(self._loaded_version).set(1)
            self.serving.set(0 if version is None else 1)


def start_exporter(metrics: Metrics, address: str, port: int) -> Any:
    """Serve /metrics over HTTP; returns the server (call shutdown() to stop). Port 0 disables."""
    if port == 0:
        return None
    server, _ = start_http_server(port, address, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", address, server.server_port)
    return server
