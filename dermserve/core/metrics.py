"""Prometheus metrics of the model path, for every process that classifies: the front
(service/metrics.py builds on this) and the batch worker (worker/runner.py), so that a batch
image and an online image are measured the same way. An `Observer` (core/observe.py) for the
classifier and the micro-batcher; the classifier itself never imports prometheus.

Names are an interface: deploy/'s alerts and dashboards use them.
  dermserve_decode_latency_seconds                 validation + decoding of one image
  dermserve_model_latency_seconds                  one backend predict call, queueing in the
                                                   micro-batcher included
  dermserve_image_rejections_total{reason}         images refused by validation
  dermserve_predictions_total{label,model_version} predictions by top label
  dermserve_abstentions_total{reason,model_version}
  dermserve_batch_size                             images per backend call (micro-batcher)
  dermserve_model_load_events_total{event}         backend version events (loaded, unloaded, ...)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from dermserve.core.prediction import Prediction

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a cache-hot tiny image (~1 ms) up to the default backend timeout (10 s)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # images; powers of two up to past the max batch


class ModelMetrics:
    """Decode, validation, model and prediction metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.decode_latency = Histogram("dermserve_decode_latency_seconds",
                                        "Validation and decoding of one image.",
                                        buckets=LATENCY_BUCKETS, registry=reg)
        self.rejections = Counter("dermserve_image_rejections",
                                  "Images refused by validation, by reason.", ["reason"],
                                  registry=reg)
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

    # --- backend ----------------------------------------------------------------------------------
    def model_event(self, model_name: str, version: int, event: str) -> None:
        """The embedded backend's `events` callback."""
        self.load_events.labels(event).inc()
