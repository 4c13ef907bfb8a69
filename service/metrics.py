"""Prometheus metrics of the front service, on their own registry (no module globals), served
over HTTP by `start_exporter`.

Names are an interface: deploy/'s alerts and dashboards use them.
  dermserve_requests_total{method,code}            RPCs by method (e.g. Classify) and status code
  dermserve_request_latency_seconds{method}        whole-call latency
  dermserve_decode_latency_seconds                 validation + decoding of one image
  dermserve_model_latency_seconds                  one backend predict call, queueing in the
                                                   micro-batcher included
  dermserve_image_rejections_total{reason}         images refused by validation
  dermserve_predictions_total{label,model_version} predictions by top label
  dermserve_abstentions_total{reason,model_version}
  dermserve_batch_size                             images per backend call
  dermserve_model_load_events_total{event}         backend version events (loaded, unloaded, ...)
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

from core.prediction import Prediction

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a cache-hot tiny image (~1 ms) up to the default backend timeout (10 s)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # images; powers of two up to past the max batch


class Metrics:
    """Every dermserve metric; an Observer for the core and a CallRecorder for the interceptor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._loaded_version: str | None = None
        self._define_request_metrics()
        self._define_model_metrics()

    def _define_request_metrics(self) -> None:
        reg = self.registry
        self.requests = Counter("dermserve_requests", "RPCs by method and status code.",
                                ["method", "code"], registry=reg)
        self.request_latency = Histogram("dermserve_request_latency_seconds",
                                         "Whole-call latency.", ["method"],
                                         buckets=LATENCY_BUCKETS, registry=reg)
        self.decode_latency = Histogram("dermserve_decode_latency_seconds",
                                        "Validation and decoding of one image.",
                                        buckets=LATENCY_BUCKETS, registry=reg)
        self.stream_pending = Gauge("dermserve_stream_images_pending",
                                    "Images read from ClassifyStreams whose answers gRPC has "
                                    "not taken yet.", registry=reg)
        self.rejections = Counter("dermserve_image_rejections",
                                  "Images refused by validation, by reason.", ["reason"],
                                  registry=reg)

    def _define_model_metrics(self) -> None:
        reg = self.registry
        self.model_latency = Histogram("dermserve_model_latency_seconds",
                                       "One backend predict call, micro-batch queueing included.",
                                       buckets=LATENCY_BUCKETS, registry=reg)
        self.predictions = Counter("dermserve_predictions", "Predictions by top label.",
                                   ["label", "model_version"], registry=reg)
        self.abstentions = Counter("dermserve_abstentions", "Abstentions by reason.",
                                   ["reason", "model_version"], registry=reg)
        self.batch_size = Histogram("dermserve_batch_size", "Images per backend call.",
                                    buckets=BATCH_BUCKETS, registry=reg)
        self.load_events = Counter("dermserve_model_load_events",
                                   "Model version events reported by the backend.", ["event"],
                                   registry=reg)
        self.model_loaded = Gauge("dermserve_model_loaded",
                                  "1 for the model version the health probe found answering.",
                                  ["model_version"], registry=reg)
        self.serving = Gauge("dermserve_serving", "1 while health reports SERVING.",
                             registry=reg)

    # --- CallRecorder ---------------------------------------------------------------------------
    def call_finished(self, method: str, code: str, seconds: float) -> None:
        short = method.rsplit("/", 1)[-1]
        self.requests.labels(short, code).inc()
        self.request_latency.labels(short).observe(seconds)

    def stream_images_pending(self, delta: int) -> None:
        self.stream_pending.inc(delta)

    # --- Observer -------------------------------------------------------------------------------
    def image_decoded(self, seconds: float) -> None:
        self.decode_latency.observe(seconds)

    def image_rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def model_called(self, seconds: float) -> None:
        self.model_latency.observe(seconds)

    def batch_formed(self, size: int) -> None:
        self.batch_size.observe(size)

    def predicted(self, prediction: Prediction) -> None:
        version = str(prediction.model_version)
        self.predictions.labels(prediction.top_label, version).inc()
        if prediction.abstained:
            self.abstentions.labels(prediction.abstention.value, version).inc()

    # --- backend and health -------------------------------------------------------------------
    def model_event(self, model_name: str, version: int, event: str) -> None:
        """The embedded backend's `events` callback."""
        self.load_events.labels(event).inc()

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
