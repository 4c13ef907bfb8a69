"""The classifier core: open each image (core/image/opening.py: every check of its bytes and
header) -> resolve the version -> decode each image (core/image/decoding.py) and make it that
version's input (core/preprocessing.py) -> predict -> post-process.

grpc-free: the servicer calls it for online requests and the batch worker for batch jobs, so both
run the same checks on the same images, within the same decode budget. Errors are core.errors
types only.

Memory: the version is resolved before decoding because its input spec says how much detail to
decode (a JPEG decodes at 1/2 to 1/8 scale), and each image holds its budget share until it is
the model input, a few kB; the large decoded pixels never outlive their share.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from PIL import Image

from dermserve.core.backends.base import Backend, BatchOutput, ModelRef, VersionInfo
from dermserve.core.context import NO_CONTEXT, ContextBatch, PatientContext
from dermserve.core.errors import (
    BackendTimeout,
    DermserveError,
    ExplanationUnsupported,
    InternalError,
    InvalidImage,
    ModelNotFound,
)
from dermserve.core.explanation import Explanation, class_index, overlay_png
from dermserve.core.image.decoding import PixelBudget, budget_share, decode_rgb, draft_for_input
from dermserve.core.image.dicom import quiet_pydicom
from dermserve.core.image.limits import ImageLimits
from dermserve.core.image.opening import dicom_context, dicom_source, open_image, parse_share
from dermserve.core.model_config import InputSpec, ModelConfig
from dermserve.core.observe import NullObserver, Observer
from dermserve.core.prediction import DicomReference, Prediction, build_prediction
from dermserve.core.preprocessing import to_model_input
from dermserve.core.settings import ServingSettings

log = logging.getLogger(__name__)

Results = dict[int, Prediction | DermserveError]
Contexts = dict[int, PatientContext]
"""Each opened image's patient context (the request's over its DICOM file's), by position."""
T = TypeVar("T")
"""Each image's prediction or error, by its position in the call."""


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

    def check(self) -> None:
        """Raises BackendTimeout once the deadline has passed (between decoding steps)."""
        self.remaining()


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

    @classmethod
    def from_settings(cls, backend: Backend, settings: ServingSettings,
                      observer: Observer | None = None) -> Classifier:
        """The front's and the worker's classifier: the same checks, floor, default label and
        kind of decode budget (each image holds its share until it is the model input), and
        pydicom quiet about the files it reads (core/image/dicom.py `quiet_pydicom`)."""
        quiet_pydicom()
        return cls(backend, settings.model_name, settings.limits, settings.min_confidence_floor,
                   observer=observer, decode_budget=PixelBudget(settings.decode_pixel_budget),
                   default_version_label=settings.default_version_label)

    def classify(self, image: bytes, ref: ModelRef | None = None, request_id: str = "",
                 timeout: float | None = None,
                 context: PatientContext | None = None) -> Prediction:
        """Classify one image; every failure is raised as a DermserveError."""
        result = self.classify_many([image], ref, [request_id], timeout, [context])[0]
        if isinstance(result, DermserveError):
            raise result
        return result

    def classify_many(self, images: Sequence[bytes], ref: ModelRef | None = None,
                      request_ids: Sequence[str] | None = None,
                      timeout: float | None = None,
                      contexts: Sequence[PatientContext | None] | None = None,
                      ) -> list[Prediction | DermserveError]:
        """Classify several images in one backend call, each with its patient context (None:
        none given; a DICOM file's own tags fill what the request leaves unknown). An image that
        fails validation gets its error in its place; a backend failure concerns them all and
        is raised."""
        deadline = Deadline(timeout)
        ids = list(request_ids) if request_ids is not None else [""] * len(images)
        given = list(contexts) if contexts is not None else [None] * len(images)
        if len(ids) != len(images) or len(given) != len(images):
            raise InternalError(f"{len(images)} images but {len(ids)} request ids and "
                                f"{len(given)} contexts")
        results: Results = {}
        opened: dict[int, Image.Image] = {}
        for index, data in enumerate(images):
            try:  # before the backend is asked: a bad header is the client's error, whatever
                opened[index] = self.open(data, deadline)  # the backend's state
            except InvalidImage as exc:
                results[index] = exc
        sources = {index: dicom_source(image) for index, image in opened.items()}
        known = {index: (given[index] or NO_CONTEXT).over(dicom_context(image))
                 for index, image in opened.items()}
        if opened:
            results.update(self._predict(opened, images, ids, known, ref, deadline))
        return [with_source(results[index], sources.get(index)) for index in range(len(images))]

    def explain(self, image: bytes, label: str = "", ref: ModelRef | None = None,
                request_id: str = "", timeout: float | None = None,
                context: PatientContext | None = None) -> Explanation:
        """Classify one image and explain `label` (empty: the top class) with the version's
        Grad-CAM map, drawn over the image as the model saw it. The same checks and budget as
        classify; UNKNOWN_LABEL for a label the version lacks, EXPLANATION_UNSUPPORTED for a
        version without the `explain` signature, EXPLANATION_WITHOUT_CONTEXT for an image with
        patient context and a version that uses it but whose `explain` signature does not take
        it (its explanation would not be of the answer Classify gives)."""
        deadline = Deadline(timeout)
        opened = self.open(image, deadline)
        wanted = self.wanted(ref)
        return self._again_if_unloaded(wanted, lambda again: self._explain_once(
            self.open(image, deadline) if again else opened, label, wanted, request_id,
            deadline, context or NO_CONTEXT))

    def _explain_once(self, opened: Image.Image, label: str, wanted: ModelRef, request_id: str,
                      deadline: Deadline, context: PatientContext) -> Explanation:
        source = dicom_source(opened)
        version = self.backend.resolve(wanted, deadline.remaining())
        config = require_config(version)
        known = context.over(dicom_context(opened))
        if version.takes_context and not version.explain_takes_context and not known.empty:
            raise ExplanationUnsupported(
                "this version uses the patient context, which its explain signature does not "
                "take; classify the image instead", "EXPLANATION_WITHOUT_CONTEXT")
        wanted_class = class_index(config, label)
        model_input = self.decode(opened, config.input, deadline)
        pinned = ModelRef(version.name, version=version.version)
        started = time.perf_counter()
        rows = ContextBatch.of([known]) if version.explain_takes_context else None
        output = self.backend.explain(pinned, model_input[None], np.array([wanted_class], np.int32),
                                      deadline.remaining(), rows)
        self.observer.model_called(time.perf_counter() - started)
        prediction = with_source(self._build(output, config, [request_id], [known])[0], source)
        assert isinstance(prediction, Prediction)  # with_source keeps a Prediction one
        explained = config.labels[int(output.class_indices[0])]
        heatmap = output.heatmaps[0]
        return Explanation(prediction, explained, heatmap, overlay_png(model_input, heatmap))

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

    def open(self, data: bytes, deadline: Deadline) -> Image.Image:
        """Every check of `data` that needs no pixels (its pixels stay encoded); a DICOM file
        is parsed within the decode budget (core/image/opening.py `parse_share`)."""
        try:
            with self._budget_share(parse_share(data), deadline):
                return open_image(data, self.limits, deadline.check)
        except InvalidImage as exc:
            self.observer.image_rejected(exc.reason)
            raise

    def decode(self, image: Image.Image, spec: InputSpec, deadline: Deadline) -> np.ndarray:
        """An opened image as `spec`'s model input, decoded at the least scale that keeps the
        detail preprocessing uses, within the decode budget (takes ownership of `image`)."""
        started = time.perf_counter()
        draft_for_input(image, spec)
        try:
            with self._budget_share(budget_share(image), deadline):
                array = to_model_input(decode_rgb(image, deadline.check), spec)
        except InvalidImage as exc:
            self.observer.image_rejected(exc.reason)
            raise
        self.observer.image_decoded(time.perf_counter() - started)
        return array

    @contextmanager
    def _budget_share(self, pixels: int, deadline: Deadline) -> Iterator[None]:
        if self.decode_budget is None or pixels == 0:
            yield
            return
        with self.decode_budget.hold(pixels, deadline.remaining()):
            yield

    def _predict(self, opened: dict[int, Image.Image], images: Sequence[bytes], ids: list[str],
                 contexts: Contexts, ref: ModelRef | None, deadline: Deadline) -> Results:
        wanted = self.wanted(ref)
        return self._again_if_unloaded(wanted, lambda again: self._predict_once(
            {index: self.open(images[index], deadline) for index in opened} if again else opened,
            ids, contexts, wanted, deadline))

    def _again_if_unloaded(self, wanted: ModelRef, attempt: Callable[[bool], T]) -> T:
        """`attempt(False)`, then `attempt(True)` once if the version it resolved was unloaded
        before it answered (a hot reload): the next resolve names its successor, whose input
        may differ, so the attempt opens and decodes its images again. Once only, so a broken
        backend cannot loop us; a pinned version is not replaced."""
        try:
            return attempt(False)
        except ModelNotFound:
            if wanted.version is not None:
                raise
            log.info("resolved version of %s went away; resolving again", wanted.describe())
            return attempt(True)

    def _predict_once(self, opened: dict[int, Image.Image], ids: list[str], contexts: Contexts,
                      wanted: ModelRef, deadline: Deadline) -> Results:
        version = self.backend.resolve(wanted, deadline.remaining())
        config = require_config(version)
        results: Results = {}
        arrays: dict[int, np.ndarray] = {}
        for index, image in opened.items():
            try:
                arrays[index] = self.decode(image, config.input, deadline)
            except InvalidImage as exc:
                results[index] = exc
        if arrays:
            pinned = ModelRef(version.name, version=version.version)
            rows = [contexts.get(index, NO_CONTEXT) for index in arrays]
            # Only a version that takes context gets it; the others answer as they always did.
            context = ContextBatch.of(rows) if version.takes_context else None
            started = time.perf_counter()
            output = self.backend.predict(pinned, np.stack(list(arrays.values())),
                                          deadline.remaining(), context)
            self.observer.model_called(time.perf_counter() - started)
            predictions = self._build(output, config, [ids[index] for index in arrays], rows)
            results.update(zip(arrays, predictions, strict=True))
        return results

    def _build(self, output: BatchOutput, config: ModelConfig, request_ids: list[str],
               contexts: Sequence[PatientContext] | None = None) -> list[Prediction]:
        answering = output.version
        config = answering.config or config
        rows = list(contexts) if contexts is not None else [NO_CONTEXT] * len(request_ids)
        predictions = [
            build_prediction(request_id, answering.name, answering.version, config,
                             output.probabilities[row], float(output.ood_scores[row]),
                             self.min_confidence_floor,
                             context_used=answering.takes_context and not rows[row].empty)
            for row, request_id in enumerate(request_ids)]
        for prediction in predictions:
            self.observer.predicted(prediction)
        return predictions


def with_source(result: Prediction | DermserveError,
                source: DicomReference | None) -> Prediction | DermserveError:
    """A prediction of a DICOM image carries the image's UIDs (core/image/dicom.py)."""
    if source is None or not isinstance(result, Prediction):
        return result
    return dataclasses.replace(result, dicom=source)


def require_config(version: VersionInfo) -> ModelConfig:
    """A resolved version must carry its config: it says how to preprocess and label."""
    if version.config is None:
        raise InternalError(f"{version.name} version {version.version} resolved without a config")
    return version.config

