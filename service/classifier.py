"""The classifier core: validate -> resolve the version -> preprocess -> predict -> post-process.

grpc-free: the servicer calls it for online requests and the batch worker for batch jobs, so both
run the same checks on the same images. Errors are service.errors types only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from service.backends.base import Backend, BatchOutput, ModelRef, VersionInfo
from service.errors import (
    BackendTimeout,
    DermserveError,
    InternalError,
    InvalidImage,
    ModelNotFound,
)
from service.model_config import ModelConfig
from service.observe import NullObserver, Observer
from service.prediction import Prediction, build_prediction
from service.preprocessing import to_model_input
from service.validation import ImageLimits, PixelBudget, decode_image

log = logging.getLogger(__name__)


class Deadline:
    """A point in time shared by the steps of one call; `None` means no deadline."""

    def __init__(self, timeout: float | None) -> None:
        self.expires = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left, or None without a deadline; raises BackendTimeout once it has passed."""
        if self.expires is None:
            return None
        left = self.expires - time.monotonic()
        if left <= 0:
            raise BackendTimeout("the deadline passed before the model answered")
        return left


class Classifier:
    """Classifies encoded images with one model through any Backend."""

    def __init__(self, backend: Backend, model_name: str, limits: ImageLimits,
                 min_confidence_floor: float = 0.0, observer: Observer | None = None,
                 decode_budget: PixelBudget | None = None,
                 default_version_label: str = "") -> None:
        self.backend = backend
        self.default_version_label = default_version_label
        self.model_name = model_name
        self.limits = limits
        self.min_confidence_floor = min_confidence_floor
        self.observer: Observer = observer or NullObserver()
        self.decode_budget = decode_budget

    def classify(self, image: bytes, ref: ModelRef | None = None, request_id: str = "",
                 timeout: float | None = None) -> Prediction:
        """Classify one image; every failure is raised as a DermserveError."""
        deadline = Deadline(timeout)
        decoded = self.decode(image, deadline.remaining())
        return self._predict([decoded], [request_id], ref, deadline)[0]

    def classify_many(self, images: Sequence[bytes], ref: ModelRef | None = None,
                      request_ids: Sequence[str] | None = None,
                      timeout: float | None = None) -> list[Prediction | DermserveError]:
        """Classify several images in one backend call. An image that fails validation gets its
        error in its place; a backend failure concerns them all and is raised."""
        deadline = Deadline(timeout)
        ids = list(request_ids) if request_ids is not None else [""] * len(images)
        if len(ids) != len(images):
            raise InternalError(f"{len(images)} images but {len(ids)} request ids")
        errors: dict[int, DermserveError] = {}
        valid: dict[int, Image.Image] = {}
        for index, data in enumerate(images):
            try:
                valid[index] = self.decode(data, deadline.remaining())
            except InvalidImage as exc:
                errors[index] = exc
        results: dict[int, Prediction | DermserveError] = dict(errors)
        if valid:
            predictions = self._predict(list(valid.values()), [ids[i] for i in valid], ref,
                                        deadline)
            results.update(zip(valid, predictions, strict=True))
        return [results[index] for index in range(len(images))]

    def describe(self, ref: ModelRef | None = None, timeout: float | None = None) -> VersionInfo:
        """The version `ref` (default: the latest) resolves to now."""
        return self.backend.resolve(self.wanted(ref), timeout)

    def wanted(self, ref: ModelRef | None) -> ModelRef:
        """`ref` if it pins a version or names a label, else the default: the version carrying
        the default label when one is set (so a canary never answers unpinned calls), otherwise
        the latest."""
        if ref is not None and (ref.version is not None or ref.label):
            return ref
        return ModelRef(self.model_name, label=self.default_version_label or None)

    def list_versions(self, timeout: float | None = None) -> list[VersionInfo]:
        """Every version of the model the backend knows, newest first."""
        return self.backend.list_versions(self.model_name, timeout)

    def decode(self, data: bytes, timeout: float | None = None) -> Image.Image:
        """Validate and decode one image, reporting the time or the rejection."""
        started = time.perf_counter()
        try:
            image = decode_image(data, self.limits, self.decode_budget, timeout)
        except InvalidImage as exc:
            self.observer.image_rejected(exc.reason)
            raise
        self.observer.image_decoded(time.perf_counter() - started)
        return image

    def _predict(self, images: list[Image.Image], request_ids: list[str], ref: ModelRef | None,
                 deadline: Deadline) -> list[Prediction]:
        wanted = self.wanted(ref)
        try:
            return self._predict_once(images, request_ids, wanted, deadline)
        except ModelNotFound:
            if wanted.version is not None:
                raise
            # Hot reload: the version we resolved was unloaded before it answered; the next
            # resolve names its successor. Once only, so a broken backend cannot loop us.
            log.info("resolved version of %s went away; resolving again", wanted.describe())
            return self._predict_once(images, request_ids, wanted, deadline)

    def _predict_once(self, images: list[Image.Image], request_ids: list[str], wanted: ModelRef,
                      deadline: Deadline) -> list[Prediction]:
        version = self.backend.resolve(wanted, deadline.remaining())
        config = require_config(version)
        batch = np.stack([to_model_input(image, config.input) for image in images])
        pinned = ModelRef(version.name, version=version.version)
        started = time.perf_counter()
        output = self.backend.predict(pinned, batch, deadline.remaining())
        self.observer.model_called(time.perf_counter() - started)
        return self._build(output, config, request_ids)

    def _build(self, output: BatchOutput, config: ModelConfig,
               request_ids: list[str]) -> list[Prediction]:
        answering = output.version
        config = answering.config or config
        predictions = [
            build_prediction(request_id, answering.name, answering.version, config,
                             output.probabilities[row], float(output.ood_scores[row]),
                             self.min_confidence_floor)
            for row, request_id in enumerate(request_ids)]
        for prediction in predictions:
            self.observer.predicted(prediction)
        return predictions


def require_config(version: VersionInfo) -> ModelConfig:
    """A resolved version must carry its config: it says how to preprocess and label."""
    if version.config is None:
        raise InternalError(f"{version.name} version {version.version} resolved without a config")
    return version.config

