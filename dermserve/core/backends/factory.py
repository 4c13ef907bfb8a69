"""The one backend factory: the front, the worker and the benchmarks open their model backend
here, from the same settings group (core/settings.py), so each gets the same timeout, retries,
TLS and version labels. TensorFlow (embedded) or the TF Serving client is imported on use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dermserve.core.backends.base import Backend
from dermserve.core.settings import ServingSettings
from dermserve.core.tls import channel_credentials

if TYPE_CHECKING:  # a TF Serving process need not import the embedded backend's module
    from dermserve.core.backends.embedded import EventSink

def open_backend(settings: ServingSettings, events: EventSink | None = None,
                 block: bool = False, largest_batch: int = 1) -> Backend:
    """The backend the settings name, started. `block`: return only once the embedded backend
    has scanned the model base (the worker); otherwise it loads in the background and health
    stays NOT_SERVING until a version answers (the front). `largest_batch`: the most images
    this process sends in one call, the sizes an embedded version is warmed up at unless
    `--warm-up-max-batch` says otherwise."""
    if settings.backend == "tfserving":
        from dermserve.core.backends.tfserving import TFServingBackend

        credentials = channel_credentials(settings.tfserving_ca) if settings.tfserving_ca else None
        return TFServingBackend(settings.tfserving_target, settings.model_name,
                                settings.backend_timeout_s, settings.backend_max_retries,
                                credentials=credentials)
    if settings.backend == "embedded":
        from dermserve.core.backends.embedded import EmbeddedBackend
        from dermserve.core.backends.savedmodel import configure_threads

        configure_threads(settings.intra_op_threads, settings.inter_op_threads)
        embedded = EmbeddedBackend(settings.model_base, settings.model_name,
                                   settings.poll_interval_s, dict(settings.version_labels),
                                   events=events,
                                   warm_up_max_batch=settings.warm_up_max_batch or largest_batch,
                                   freeze_graph=settings.freeze_graph)
        embedded.start(block=block)
        return embedded
    raise ValueError(f"unknown backend {settings.backend!r}: embedded or tfserving")
