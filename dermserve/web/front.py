"""The web page's gRPC side: every call to the front goes through `FrontClient`, which turns the
answers into JSON-ready dicts and a failed call into `FrontError` (one place, `front_errors`),
so the HTTP side never sees a raw `grpc.RpcError`.

`analyze` asks Explain first: its answer carries the classification and the heatmap in one model
call. A front or a model version without explanations (UNIMPLEMENTED, or FAILED_PRECONDITION with
reason EXPLANATION_UNSUPPORTED), or a failed explanation, still gets its image classified, and
the page says why there is no heatmap.

Every call made for a signed-in user (web/identity.py) carries that user in
`dermserve-on-behalf-of` metadata (and `dermserve-on-behalf-role: operator` for an operator):
the front, which accepts it only from a delegating token, decides which jobs the user may see.
Server-side paths (a job's result files) are dropped before anything reaches the browser.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.client.connection import call_metadata, error_entry, open_channel
from dermserve.core.identity import ON_BEHALF_OF_KEY, ON_BEHALF_ROLE_KEY, OPERATOR_ROLE
from dermserve.v1 import batch_jobs_pb2 as batch_pb
from dermserve.v1 import batch_jobs_pb2_grpc as batch_grpc
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from dermserve.web import defaults
from dermserve.web.identity import WebUser
from dermserve.web.settings import WebSettings

MELANOMA_LABEL = "mel"
EXPLANATION_UNSUPPORTED = "EXPLANATION_UNSUPPORTED"
ABSTENTION_WORDS = {
    "ABSTENTION_REASON_LOW_CONFIDENCE":
        "The model is not confident enough: its top probability is under this version's "
        "threshold. This image needs review by a clinician.",
    "ABSTENTION_REASON_OUT_OF_DISTRIBUTION":
        "The image does not look like the dermatoscopic images the model learned from (it may "
        "not be a dermatoscopic image at all). This image needs review by a clinician.",
}
"""The abstention reasons in words, as the proto's AbstentionReason comments give them."""


class FrontError(Exception):
    """A call to the front failed: its gRPC code name, dermserve reason and readable message."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason, "message": self.message}


@contextmanager
def front_errors() -> Iterator[None]:
    """Translate the gRPC errors of the calls inside into FrontError."""
    try:
        yield
    except grpc.RpcError as exc:
        entry = error_entry(exc)
        raise FrontError(entry["code"], entry["reason"], entry["message"]) from None


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


SERVER_PATH_FIELDS = ("results_jsonl_path", "results_csv_path", "results_ndjson_path")
"""A job's fields naming files on the server: of no use to a browser, and they tell the layout
of the server's disks."""


def job_json(job: batch_pb.BatchJob) -> dict[str, Any]:
    answer = to_dict(job)
    for field in SERVER_PATH_FIELDS:
        answer.pop(field, None)
    return answer


def user_metadata(user: WebUser | None) -> tuple[tuple[str, str], ...]:
    if user is None:
        return ()
    role = ((ON_BEHALF_ROLE_KEY, OPERATOR_ROLE),) if user.operator else ()
    return ((ON_BEHALF_OF_KEY, user.name), *role)


def classification_json(response: pb.ClassifyResponse) -> dict[str, Any]:
    result = to_dict(response)
    result["abstention_text"] = ABSTENTION_WORDS.get(result["abstention_reason"], "")
    return result


def operating_point(classification: pb.ClassifyResponse,
                    metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Where this image's melanoma probability lies against the version's melanoma operating
    threshold (chosen on validation images and recorded with the version's metrics)."""
    threshold = metrics.get("melanoma_threshold")
    melanoma = next((p for p in classification.probabilities if p.label == MELANOMA_LABEL), None)
    if threshold is None or melanoma is None:
        return None
    return {"label": melanoma.label, "display_name": melanoma.display_name,
            "probability": melanoma.probability, "threshold": float(threshold),
            "above": melanoma.probability >= float(threshold),
            "sensitivity": metrics.get("melanoma_sensitivity"),
            "specificity": metrics.get("melanoma_specificity")}


def explanation_json(response: pb.ExplainResponse) -> dict[str, Any]:
    return {"available": True, "explained_label": response.explained_label,
            "overlay_png_base64": base64.b64encode(response.overlay_png).decode("ascii"),
            "height": response.heatmap.height, "width": response.heatmap.width,
            "values": [round(v, 4) for v in response.heatmap.values]}  # drawn over the upload


EXPLANATION_WITHOUT_CONTEXT = "EXPLANATION_WITHOUT_CONTEXT"  # core/classifier.py `explain`
EXPLANATION_OPTIONAL = {"UNIMPLEMENTED", "FAILED_PRECONDITION", "INTERNAL", "DEADLINE_EXCEEDED"}
"""Codes of a failed Explain after which Classify is still worth asking: the front or the version
has no explanations, or computing one failed where a plain classification may not. An image the
API refuses (INVALID_ARGUMENT and the like) is refused by Classify alike, so it is shown as is."""


def unavailable(error: FrontError) -> dict[str, Any]:
    """Why there is no heatmap, in words."""
    if error.reason == EXPLANATION_UNSUPPORTED:
        message = "No heatmap: this model version was exported without explanations."
    elif error.reason == EXPLANATION_WITHOUT_CONTEXT:
        message = ("No heatmap: this model version used the patient context, which its "
                   "explanations cannot take.")
    elif error.code == "UNIMPLEMENTED":
        message = "No heatmap: this front does not offer explanations."
    else:
        message = (f"No heatmap: the explanation failed ({error.code}); the classification "
                   "is complete.")
    return {"available": False, "reason": error.reason or error.code, "message": message}


class FrontClient:
    """One channel to the front, shared by every HTTP request (channels are thread-safe)."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.channel = open_channel(settings.connection)
        self.classifier = pb_grpc.LesionClassifierStub(self.channel)
        self.jobs = batch_grpc.BatchJobsStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._models: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _call(self, method: Any, request: Message, user: WebUser | None = None) -> Any:
        metadata = (*(call_metadata(self.settings.connection) or ()), *user_metadata(user))
        with front_errors():
            return method(request, timeout=self.settings.timeout_s, metadata=metadata or None)

    def analyze(self, image: bytes, user: WebUser | None = None,
                context: pb.PatientContext | None = None) -> dict[str, Any]:
        """Classify one image (with the patient context the form gave) and explain it when the
        front and the version can."""
        try:
            explained = self._call(self.classifier.Explain,
                                   pb.ExplainRequest(image=image, context=context), user)
            classification, explanation = explained.classification, explanation_json(explained)
        except FrontError as exc:
            if exc.code not in EXPLANATION_OPTIONAL:
                raise
            classification = self._call(self.classifier.Classify,
                                        pb.ClassifyRequest(image=image, context=context), user)
            explanation = unavailable(exc)
        model = self.model(classification.model.version)
        return {"classification": classification_json(classification),
                "explanation": explanation,
                "operating_point": operating_point(classification, model["metrics"]),
                "model": {key: model[key] for key in ("name", "version", "description")}}

    def model(self, version: int | None) -> dict[str, Any]:
        """A version's model card summary: GetModel's description, metrics and classes."""
        with self._lock:
            if version is not None and version in self._models:
                return self._models[version]
        selector = pb.ModelSelector(version=version) if version else None
        described = self._call(self.classifier.GetModel, pb.GetModelRequest(model=selector))
        card = model_card(described.version)
        with self._lock:
            self._models[card["version"]] = card
            while len(self._models) > defaults.MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return card

    def job(self, job_id: str, user: WebUser | None = None) -> dict[str, Any]:
        answer = self._call(self.jobs.GetBatchJob, batch_pb.GetBatchJobRequest(job_id=job_id),
                            user)
        return job_json(answer.job)

    def job_list(self, page_token: str, user: WebUser | None = None) -> dict[str, Any]:
        """One page of the user's jobs (every job for an operator), newest first."""
        answer = self._call(self.jobs.ListBatchJobs, batch_pb.ListBatchJobsRequest(
            page_size=defaults.JOBS_PAGE_SIZE, page_token=page_token), user)
        return {"jobs": [job_json(job) for job in answer.jobs],
                "next_page_token": answer.next_page_token}

    def results(self, job_id: str, user: WebUser | None = None) -> Iterator[bytes]:
        """A job's results as JSON Lines, page after page; the first page is read before the
        first line is given, so an unknown job fails before any response is sent."""
        token = ""
        while True:
            page = self._call(self.jobs.ListBatchJobResults, batch_pb.ListBatchJobResultsRequest(
                job_id=job_id, page_size=defaults.RESULTS_PAGE_SIZE, page_token=token), user)
            for result in page.results:
                yield (json.dumps(to_dict(result)) + "\n").encode()
            token = page.next_page_token
            if not token or not page.results:
                return

    def serving(self) -> bool:
        """Whether the front answers and reports SERVING (the page's readiness)."""
        try:
            answer = self.health.Check(health_pb2.HealthCheckRequest(),
                                       timeout=self.settings.timeout_s)
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self.channel.close()


def model_card(version: pb.ModelVersion) -> dict[str, Any]:
    try:
        metrics = json.loads(version.metrics_json or "{}")
    except ValueError:
        metrics = {}
    return {"name": version.model.name, "version": version.model.version,
            "description": version.description, "metrics": metrics,
            "labels": list(version.labels), "display_names": list(version.display_names),
            "version_labels": list(version.version_labels)}
