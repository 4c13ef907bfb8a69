"""Hooks through which the grpc-free core reports timings and outcomes.

The core (classifier, micro-batcher) calls an `Observer`; core/metrics.py implements one on
Prometheus for the front and the worker, and a test may pass its own. The classifier and the
micro-batcher never import prometheus.
"""

from __future__ import annotations

from typing import Protocol

from dermserve.core.prediction import Prediction


class Observer(Protocol):
    """Receives measurements from the classifier core and the micro-batcher."""

    def image_decoded(self, seconds: float) -> None:
        """Validation and decoding of one image took `seconds`."""
        ...

    def image_rejected(self, reason: str) -> None:
        """One image failed validation with `reason`."""
        ...

    def model_called(self, seconds: float) -> None:
        """One backend predict call (possibly a batch) took `seconds`."""
        ...

    def batch_formed(self, size: int) -> None:
        """The micro-batcher sent `size` images to the backend in one call."""
        ...

    def predicted(self, prediction: Prediction) -> None:
        """A prediction was made (label, version and abstention are in it)."""
        ...


class NullObserver:
    """Measures nothing: the default when no one listens."""

    def image_decoded(self, seconds: float) -> None:
        pass

    def image_rejected(self, reason: str) -> None:
        pass

    def model_called(self, seconds: float) -> None:
        pass

    def batch_formed(self, size: int) -> None:
        pass

    def predicted(self, prediction: Prediction) -> None:
        pass
