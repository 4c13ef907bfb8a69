"""The LesionClassifier servicer: protos in, domain calls, protos out. Nothing else.

Errors are raised as core.errors and mapped to status codes by service/status.py; on
ClassifyStream each image's error becomes that image's `error` and the stream goes on.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from dermserve.core import fhir
from dermserve.core.backends.base import ModelRef, VersionInfo, VersionState
from dermserve.core.classifier import Classifier
from dermserve.core.errors import DermserveError, InvalidRequest
from dermserve.core.explanation import Explanation
from dermserve.core.prediction import Abstention, Prediction
from dermserve.protocol.context import from_message as context_of
from dermserve.protocol.results import to_dicom_reference
from dermserve.service import defaults
from dermserve.service.classify_stream import PendingObserver, StreamDrain, StreamSession
from dermserve.service.logs import request_id_var
from dermserve.service.status import public_error, status_code
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ABSTENTION_REASONS = {
    Abstention.NONE: pb.ABSTENTION_REASON_UNSPECIFIED,
    Abstention.LOW_CONFIDENCE: pb.ABSTENTION_REASON_LOW_CONFIDENCE,
    Abstention.OUT_OF_DISTRIBUTION: pb.ABSTENTION_REASON_OUT_OF_DISTRIBUTION,
}
VERSION_STATES = {
    VersionState.START: pb.MODEL_VERSION_STATE_START,
    VersionState.LOADING: pb.MODEL_VERSION_STATE_LOADING,
    VersionState.AVAILABLE: pb.MODEL_VERSION_STATE_AVAILABLE,
    VersionState.UNLOADING: pb.MODEL_VERSION_STATE_UNLOADING,
    VersionState.END: pb.MODEL_VERSION_STATE_END,
}


class LesionClassifierServicer(pb_grpc.LesionClassifierServicer):
    """Serves dermserve.v1.LesionClassifier over a Classifier."""

    def __init__(self, classifier: Classifier, backend_timeout_s: float,
                 stream_pool: ThreadPoolExecutor, drain: StreamDrain | None = None,
                 observer: PendingObserver | None = None) -> None:
        self.classifier = classifier
        self.backend_timeout_s = backend_timeout_s
        self.stream_pool = stream_pool
        self.drain = drain if drain is not None else StreamDrain()
        self.observer = observer

    def Classify(self, request: pb.ClassifyRequest,
                 context: grpc.ServicerContext) -> pb.ClassifyResponse:
        request_id = request_id_of(request)
        request_id_var.set(request_id)  # scoped per call by the ErrorMappingInterceptor
        return self._classify(request, request_id, context)

    def _classify(self, request: pb.ClassifyRequest, request_id: str,
                  context: grpc.ServicerContext) -> pb.ClassifyResponse:
        prediction = self.classifier.classify(
            request.image, self._ref(request.model), request_id, self._timeout(context),
            context_of(request))
        log.debug("classified: version %d, abstention %s", prediction.model_version,
                  prediction.abstention.value)
        response = to_response(prediction)
        if request.format == pb.RESULT_FORMAT_FHIR:
            response.fhir_bundle_json = fhir.bundle_json(prediction)
        return response

    def ClassifyStream(self, request_iterator: Iterator[pb.ClassifyStreamRequest],
                       context: grpc.ServicerContext) -> Iterator[pb.ClassifyStreamResponse]:
        session = StreamSession(lambda request: self._stream_item(request, context),
                                self.stream_pool, self.drain, self.observer)
        return session.run(request_iterator, context)

    def Explain(self, request: pb.ExplainRequest,
                context: grpc.ServicerContext) -> pb.ExplainResponse:
        request_id = request_id_of(request)
        request_id_var.set(request_id)  # scoped per call by the ErrorMappingInterceptor
        explanation = self.classifier.explain(request.image, request.label,
                                              self._ref(request.model), request_id,
                                              self._timeout(context), context_of(request))
        return to_explain_response(explanation)

    def GetModel(self, request: pb.GetModelRequest,
                 context: grpc.ServicerContext) -> pb.GetModelResponse:
        info = self.classifier.describe(self._ref(request.model), self._timeout(context))
        return pb.GetModelResponse(version=to_model_version(info))

    def ListModels(self, request: pb.ListModelsRequest,
                   context: grpc.ServicerContext) -> pb.ListModelsResponse:
        versions = self.classifier.list_versions(self._timeout(context))
        return pb.ListModelsResponse(versions=[to_model_version(info) for info in versions])

    # --- helpers ---------------------------------------------------------------------------------
    def _ref(self, selector: pb.ModelSelector) -> ModelRef:
        return model_ref(selector, self.classifier.model_name)

    def _timeout(self, context: grpc.ServicerContext) -> float:
        """The client's deadline, capped so that a call without one cannot hang forever."""
        remaining = context.time_remaining()
        if remaining is None:
            return self.backend_timeout_s
        return min(remaining, self.backend_timeout_s)

    def _stream_item(self, request: pb.ClassifyRequest,
                     context: grpc.ServicerContext) -> pb.ClassifyStreamResponse:
        """One image's answer. The id is checked before anything uses it: an invalid one is
        neither logged nor echoed (a 5 MB id once made an answer too big to send)."""
        try:
            request_id = request_id_of(request)
        except InvalidRequest as exc:
            return error_answer("", public_error(exc, "ClassifyStream"))
        scope = request_id_var.set(request_id)
        try:
            result = self._classify(request, request_id, context)
            return pb.ClassifyStreamResponse(request_id=request_id, result=result)
        except Exception as exc:  # noqa: BLE001 - each image's failure is its own answer
            return error_answer(request_id, public_error(exc, "ClassifyStream"))
        finally:
            request_id_var.reset(scope)


def error_answer(request_id: str, error: DermserveError) -> pb.ClassifyStreamResponse:
    return pb.ClassifyStreamResponse(request_id=request_id, error=pb.ImageError(
        code=status_code(error).name, reason=error.reason, message=error.message))


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(request: pb.ClassifyRequest | pb.ExplainRequest) -> str:
    """The caller's id, checked (it goes into logs), or a fresh one."""
    request_id = request.request_id
    if not request_id:
        return new_request_id()
    if len(request_id) > defaults.MAX_REQUEST_ID_LENGTH or not request_id.isprintable():
        raise InvalidRequest(f"request_id must be at most {defaults.MAX_REQUEST_ID_LENGTH} "
                             "printable characters", "INVALID_REQUEST_ID")
    return request_id


def model_ref(selector: pb.ModelSelector, model_name: str) -> ModelRef:
    choice = selector.WhichOneof("choice")
    if choice == "version":
        if selector.version <= 0:
            raise InvalidRequest("model.version must be a positive integer", "INVALID_VERSION")
        return ModelRef(model_name, version=selector.version)
    if choice == "version_label":
        label = selector.version_label
        if not label or len(label) > defaults.MAX_VERSION_LABEL_LENGTH or not label.isprintable():
            raise InvalidRequest("model.version_label must be 1-"
                                 f"{defaults.MAX_VERSION_LABEL_LENGTH} printable characters",
                                 "INVALID_VERSION")
        return ModelRef(model_name, label=selector.version_label)
    return ModelRef(model_name)


def to_response(prediction: Prediction) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        probabilities=[pb.LabelProbability(label=item.label, display_name=item.display_name,
                                           probability=item.probability)
                       for item in prediction.probabilities],
        top_label=prediction.top_label,
        model=pb.ModelVersionRef(name=prediction.model_name, version=prediction.model_version),
        request_id=prediction.request_id,
        abstained=prediction.abstained,
        abstention_reason=ABSTENTION_REASONS[prediction.abstention],
        ood_score=prediction.ood_score,
        dicom=None if prediction.dicom is None else to_dicom_reference(prediction.dicom),
        context_used=prediction.context_used)


def to_explain_response(explanation: Explanation) -> pb.ExplainResponse:
    heatmap = explanation.heatmap
    return pb.ExplainResponse(
        classification=to_response(explanation.prediction),
        explained_label=explanation.explained_label,
        heatmap=pb.Heatmap(height=heatmap.shape[0], width=heatmap.shape[1],
                           values=heatmap.astype(float).ravel().tolist()),
        overlay_png=explanation.overlay_png)


def to_model_version(info: VersionInfo) -> pb.ModelVersion:
    message = pb.ModelVersion(
        model=pb.ModelVersionRef(name=info.name, version=info.version),
        state=VERSION_STATES[info.state], version_labels=list(info.labels_assigned),
        error=info.error, takes_context=info.takes_context)
    if info.config is not None:
        config = info.config
        message.labels.extend(config.labels)
        message.display_names.extend(config.display_name(label) for label in config.labels)
        message.input_size.CopyFrom(pb.InputSize(height=config.input.height,
                                                 width=config.input.width))
        message.metrics_json = json.dumps(config.metrics, sort_keys=True)
        message.description = config.description
        message.min_confidence = config.abstention.min_confidence
        if config.abstention.max_ood_score is not None:
            message.max_ood_score = config.abstention.max_ood_score
    return message
