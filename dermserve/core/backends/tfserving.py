"""The tfserving backend: the same Backend interface, answered by a TensorFlow Serving server over
gRPC (tensorflow-serving-api's PredictionService and ModelService).

- Which version answers. `ModelRef.version` becomes `model_spec.version`, `ModelRef.label`
  becomes `model_spec.version_label`, neither means TF Serving's latest; the response's
  `model_spec.version` says which version answered.
- What a version is. Its ModelConfig (labels, input size, thresholds) comes from one Predict on
  the `metadata` signature, checked once against GetModelMetadata's `serving_default` signature,
  and cached for good (a version directory never changes), with whether it has the `explain`
  signature (Grad-CAM; Predict with `signature_name="explain"`). Which version "latest" or a label
  means is cached for `metadata_cache_ttl_s`. list_versions asks GetModelStatus, and finds the
  labels by trying the `known_labels` (TF Serving has no call that lists them).
- Failures. Every call has a deadline (`timeout`, else `timeout_s`), so nothing hangs. UNAVAILABLE
  is retried up to `max_retries` times with doubling backoff, never past the deadline; nothing
  else is retried. The channel reconnects by itself, with its reconnect backoff capped at
  RECONNECT_BACKOFF_MAX_MS so that a restarted TF Serving is found again within seconds.
- Errors. `upstream_errors` is the one place a grpc.RpcError becomes a dermserve error:
  UNAVAILABLE -> BackendUnavailable, DEADLINE_EXCEEDED -> BackendTimeout, NOT_FOUND ->
  ModelNotFound (BackendUnavailable when asking for the latest version: TF Serving has none loaded
  yet), INVALID_ARGUMENT -> ModelNotFound for an unknown version label, InvalidRequest for
  a Predict input TF Serving refused, InternalError otherwise; RESOURCE_EXHAUSTED ->
  ResourceExhausted; anything else -> InternalError.
- Cost: every `tensorflow_serving.apis` module imports TensorFlow's package (about 5-11 s on this
  machine's CPUs), so the front pays it with either backend. Tensors are built by hand
  (core.backends.tensor_protos), not with tf.make_tensor_proto.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dermserve.core.backends.base import (
    BatchOutput,
    ExplainOutput,
    ModelRef,
    VersionInfo,
    VersionState,
    explain_output,
    load_failure,
)
from dermserve.core.backends.savedmodel import check_context_inputs, check_images
from dermserve.core.backends.tensor_protos import make_ndarray, make_tensor
from dermserve.core.backends.version_dirs import UNKNOWN_LABEL_REASON
from dermserve.core.context import CONTEXT_INPUTS, ContextBatch, context_or_neutral
from dermserve.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    DermserveError,
    ExplanationUnsupported,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    ResourceExhausted,
)
from dermserve.core.model_config import (
    CLASS_INDEX_INPUT,
    CLASS_INDEX_OUTPUT,
    CONFIG_OUTPUT,
    EXPLAIN_SIGNATURE,
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    METADATA_SIGNATURE,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    PROBE_INPUT,
    SERVING_SIGNATURE,
    ModelConfig,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
"""Deadline of a call when the caller gives none: a CPU batch of 32 takes well under a second."""

DEFAULT_MAX_RETRIES = 3
"""Retries after a first UNAVAILABLE: enough to ride over a connection reset or a restart."""

DEFAULT_RETRY_BACKOFF_S = 0.1
"""First pause before a retry; it doubles (0.1, 0.2, 0.4 s), always within the deadline."""

DEFAULT_METADATA_CACHE_TTL_S = 1.0
"""Seconds to trust which version "latest" or a label means: a new version is seen within a
second, and a busy server does not pay a metadata round trip per request."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message either way: a batch of 64 uint8 images of 512x512 is 48 MiB."""

KEEPALIVE_TIME_MS = 30_000
"""Ping an idle connection every 30 s, so a dead peer (or a NAT that forgot us) is noticed."""

KEEPALIVE_TIMEOUT_MS = 10_000
"""Declare the connection dead when a ping is not answered within 10 s."""

RECONNECT_BACKOFF_MIN_MS = 100
"""First reconnect attempt after 0.1 s: a TF Serving restart is usually quick."""

RECONNECT_BACKOFF_MAX_MS = 2_000
"""Cap on the reconnect backoff (gRPC's default is 120 s, which would keep us away from a server
that came back for up to two minutes)."""

DEFAULT_KNOWN_LABELS = ("stable", "canary")
"""Labels list_versions looks for; TF Serving cannot list them."""

_STATES = {
    get_model_status_pb2.ModelVersionStatus.START: VersionState.START,
    get_model_status_pb2.ModelVersionStatus.LOADING: VersionState.LOADING,
    get_model_status_pb2.ModelVersionStatus.AVAILABLE: VersionState.AVAILABLE,
    get_model_status_pb2.ModelVersionStatus.UNLOADING: VersionState.UNLOADING,
    get_model_status_pb2.ModelVersionStatus.END: VersionState.END,
}


def default_channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                            ) -> list[tuple[str, int | str]]:
    return [
        # With a headless Service (dns:///tfserving:8500) this spreads calls over every TF Serving
        # pod; gRPC's default, pick_first, would send all of one front pod's calls to one of them.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
        ("grpc.enable_retries", 0),  # we retry ourselves, within the caller's deadline
    ]


@contextmanager
def upstream_errors(target: str, what: str,
                    invalid_argument: type[DermserveError] = InternalError,
                    not_found: type[DermserveError] = ModelNotFound) -> Iterator[None]:
    """Turn a grpc.RpcError from TF Serving into a dermserve error (the only place that does)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise translate_rpc_error(exc, target, what, invalid_argument, not_found) from exc


def translate_rpc_error(exc: grpc.RpcError, target: str, what: str,
                        invalid_argument: type[DermserveError],
                        not_found: type[DermserveError]) -> DermserveError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
    # Clients see the code only: TF Serving's details name its paths and quote TensorFlow.
    logger.info("TF Serving at %s, %s: %s: %s", target, what, code.name, details)
    message = f"the model server answered {what} with {code.name}"
    if code is grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(message)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout(message)
    if code is grpc.StatusCode.NOT_FOUND:
        return not_found(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        # TF Serving answers an unknown label with "Unrecognized servable version label".
        return (ModelNotFound(message, UNKNOWN_LABEL_REASON) if "version label" in details
                else invalid_argument(message))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message)
    return InternalError(message)


def public_status_error(status: Any) -> str:
    """A version's load error as clients may see it: TF Serving's error code, not its message
    (server paths and TensorFlow's exception text), which stays in TF Serving's log."""
    if not status.error_message:
        return ""
    codes = status.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_number
    code = codes.get(status.error_code)
    return load_failure(code.name if code is not None else "UNKNOWN", "TF Serving's log")


_DTYPE_NAMES = {types_pb2.DT_FLOAT: "float32", types_pb2.DT_INT32: "int32"}


def tensor_info_spec(tensor: Any) -> tuple[str, list[int | None]]:
    """A SignatureDef input's (dtype, shape) as TensorFlow names them (None: any size)."""
    dtype = _DTYPE_NAMES.get(tensor.dtype, types_pb2.DataType.Name(tensor.dtype))
    return dtype, [None if dim.size == -1 else dim.size for dim in tensor.tensor_shape.dim]


def signature_takes_context(signature: Any) -> bool:
    """Whether a SignatureDef takes the context inputs (BAD_MODEL_SIGNATURE when half)."""
    return check_context_inputs({name: tensor_info_spec(tensor)
                                 for name, tensor in signature.inputs.items()
                                 if name in CONTEXT_INPUTS})


def context_tensors(context: ContextBatch | None, count: int) -> dict[str, Any]:
    """The context inputs of a request for `count` images (the neutral rows when None)."""
    return {name: make_tensor(value)
            for name, value in context_or_neutral(context, count).tensors().items()}


@dataclass(frozen=True)
class _Stubs:
    prediction: Any
    model: Any


class TFServingBackend:
    """A Backend answered by TF Serving at `target` ("host:port"). Thread-safe."""

    def __init__(self, target: str, model_name: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
                 metadata_cache_ttl_s: float = DEFAULT_METADATA_CACHE_TTL_S,
                 known_labels: Sequence[str] = DEFAULT_KNOWN_LABELS,
                 credentials: grpc.ChannelCredentials | None = None,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.model_name = model_name
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._ttl_s = metadata_cache_ttl_s
        self._known_labels = tuple(known_labels)
        self._credentials = credentials
        self._channel_options = default_channel_options() + list(channel_options)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stubs: _Stubs | None = None
        self._closed = False
        self._configs: dict[int, ModelConfig] = {}
        self._explainable: dict[int, bool] = {}  # has an `explain` signature, by version
        self._takes_context: dict[int, bool] = {}  # serving_default has context inputs
        self._explain_takes_context: dict[int, bool] = {}  # and explain
        self._resolved: dict[tuple[int | None, str | None], tuple[int, float]] = {}

    # --- the Backend interface ---------------------------------------------------------------

    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        self._check_name(ref.name)
        deadline = self._deadline(timeout)
        version = self._cached_version(ref)
        if version is None:
            version = self._ask_metadata(ref, deadline)
        return self._available(version, self._config(version, deadline))

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        deadline = self._deadline(timeout)
        resolved = self.resolve(ref, self._remaining(deadline))
        config = self._config(resolved.version, deadline)
        check_images(images, config)
        inputs = {IMAGE_INPUT: make_tensor(images)}
        if resolved.takes_context:
            # Pinned: another version behind "latest" might not take the context inputs.
            ref = ModelRef(self.model_name, version=resolved.version)
            inputs.update(context_tensors(context, len(images)))
        request = predict_pb2.PredictRequest(
            model_spec=self._model_spec(ref, SERVING_SIGNATURE), inputs=inputs,
            output_filter=[PROBABILITIES_OUTPUT, OOD_OUTPUT])
        response = self._call("Predict", lambda s: s.prediction.Predict, request, deadline,
                              invalid_argument=InvalidRequest, not_found=self._not_found(ref))
        version = int(response.model_spec.version.value)
        if version != resolved.version:  # "latest" or a label moved since we resolved it
            config = self._config(version, deadline)
        probabilities, ood_scores = self._outputs(response, len(images), len(config.labels))
        return BatchOutput(self._available(version, config), probabilities, ood_scores)

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None,
                context: ContextBatch | None = None) -> ExplainOutput:
        deadline = self._deadline(timeout)
        resolved = self.resolve(ref, self._remaining(deadline))
        config = self._config(resolved.version, deadline)
        check_images(images, config)
        if not self._explainable.get(resolved.version, False):
            raise ExplanationUnsupported(f"version {resolved.version} has no "
                                         f"{EXPLAIN_SIGNATURE!r} signature")
        # Pinned: the class indices are positions in this version's labels.
        pinned = ModelRef(self.model_name, version=resolved.version)
        outputs = [HEATMAP_OUTPUT, PROBABILITIES_OUTPUT, OOD_OUTPUT, CLASS_INDEX_OUTPUT]
        inputs = {IMAGE_INPUT: make_tensor(images),
                  CLASS_INDEX_INPUT: make_tensor(np.asarray(class_indices, np.int32))}
        if resolved.explain_takes_context:
            inputs.update(context_tensors(context, len(images)))
        request = predict_pb2.PredictRequest(
            model_spec=self._model_spec(pinned, EXPLAIN_SIGNATURE), inputs=inputs,
            output_filter=outputs)
        response = self._call("Predict(explain)", lambda s: s.prediction.Predict, request,
                              deadline, invalid_argument=InvalidRequest)
        answered = {name: make_ndarray(response.outputs[name]) for name in outputs
                    if name in response.outputs}
        return explain_output(self._available(resolved.version, config), answered)

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        self._check_name(name)
        deadline = self._deadline(timeout)
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name))
        try:
            response = self._call("GetModelStatus", lambda s: s.model.GetModelStatus, request,
                                  deadline)
        except ModelNotFound:  # TF Serving knows no version of it (yet): as embedded, none
            return []
        labels = self._labels_by_version(deadline)
        infos = [self._status_info(status, labels, deadline)
                 for status in response.model_version_status]
        return sorted(infos, key=lambda info: info.version, reverse=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stubs = None

    # --- versions and their configs ----------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"no model named {name!r} (this server has {self.model_name!r})")

    def _available(self, version: int, config: ModelConfig) -> VersionInfo:
        return VersionInfo(self.model_name, version, VersionState.AVAILABLE, config,
                           self._cached_labels(version),
                           takes_context=self._takes_context.get(version, False),
                           explain_takes_context=self._explain_takes_context.get(version, False))

    def _cached_version(self, ref: ModelRef) -> int | None:
        if ref.version is not None and ref.version in self._configs:
            return ref.version  # a version we know answers to its own number
        with self._lock:
            entry = self._resolved.get((ref.version, ref.label or None))
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def _cached_labels(self, version: int) -> tuple[str, ...]:
        now = time.monotonic()
        with self._lock:
            return tuple(sorted(label for (_, label), (number, expiry) in self._resolved.items()
                                if label and number == version and expiry > now))

    def _config(self, version: int, deadline: float) -> ModelConfig:
        config = self._configs.get(version)
        if config is None:
            self._ask_metadata(ModelRef(self.model_name, version=version), deadline)
            config = self._configs[version]
        return config

    def _ask_metadata(self, ref: ModelRef, deadline: float) -> int:
        """Which version `ref` means now; learns that version's config on the way."""
        request = predict_pb2.PredictRequest(
            model_spec=self._model_spec(ref, METADATA_SIGNATURE),
            inputs={PROBE_INPUT: make_tensor(np.zeros([1], np.int32))},
            output_filter=[LABELS_OUTPUT, CONFIG_OUTPUT])
        response = self._call("Predict(metadata)", lambda s: s.prediction.Predict, request,
                              deadline, not_found=self._not_found(ref))
        version = int(response.model_spec.version.value)
        if version not in self._configs:
            config = self._parse_metadata(response, version)
            self._check_signature(version, config, deadline)
            self._configs[version] = config
        with self._lock:
            self._resolved[(ref.version, ref.label or None)] = (version,
                                                                time.monotonic() + self._ttl_s)
        return version

    def _parse_metadata(self, response: Any, version: int) -> ModelConfig:
        try:
            config = ModelConfig.from_json(make_ndarray(response.outputs[CONFIG_OUTPUT]).flat[0])
            labels = tuple(bytes(label).decode("utf-8")
                           for label in make_ndarray(response.outputs[LABELS_OUTPUT])[0])
        except (KeyError, IndexError, UnicodeDecodeError) as exc:
            raise InternalError(f"version {version}: malformed metadata answer: {exc!r}",
                                "BAD_MODEL_CONFIG") from exc
        if labels != config.labels:
            raise InternalError(f"version {version}: metadata labels {labels} differ from the "
                                f"config's {config.labels}", "BAD_MODEL_CONFIG")
        return config

    def _check_signature(self, version: int, config: ModelConfig, deadline: float) -> None:
        """GetModelMetadata's serving signature must take the image size the config names."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._model_spec(ModelRef(self.model_name, version=version)),
            metadata_field=["signature_def"])
        response = self._call("GetModelMetadata", lambda s: s.prediction.GetModelMetadata,
                              request, deadline)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def.get(SERVING_SIGNATURE)
        image = signature.inputs.get(IMAGE_INPUT) if signature is not None else None
        dims = [dim.size for dim in image.tensor_shape.dim] if image is not None else []
        expected = [-1, config.input.height, config.input.width, 3]
        if dims != expected or signature is None or not {
                PROBABILITIES_OUTPUT, OOD_OUTPUT} <= set(signature.outputs):
            raise InternalError(f"version {version}: {SERVING_SIGNATURE} does not take image "
                                f"{expected} to probabilities and ood_score (image dims "
                                f"{dims})", "BAD_MODEL_SIGNATURE")
        self._explainable[version] = EXPLAIN_SIGNATURE in signatures.signature_def
        self._takes_context[version] = signature_takes_context(signature)
        explain = signatures.signature_def.get(EXPLAIN_SIGNATURE)
        self._explain_takes_context[version] = (explain is not None
                                                and signature_takes_context(explain))

    def _labels_by_version(self, deadline: float) -> dict[int, tuple[str, ...]]:
        found: dict[int, list[str]] = {}
        for label in self._known_labels:
            try:
                version = self.resolve(ModelRef(self.model_name, label=label),
                                       self._remaining(deadline)).version
            except ModelNotFound:
                continue
            found.setdefault(version, []).append(label)
        return {version: tuple(sorted(labels)) for version, labels in found.items()}

    def _status_info(self, status: Any, labels: dict[int, tuple[str, ...]],
                     deadline: float) -> VersionInfo:
        version = int(status.version)
        state = _STATES.get(status.state, VersionState.START)
        config = self._configs.get(version)
        if config is None and state is VersionState.AVAILABLE:
            try:
                config = self._config(version, deadline)
            except ModelNotFound:  # unloaded since GetModelStatus answered
                config = None
        return VersionInfo(self.model_name, version, state, config, labels.get(version, ()),
                           public_status_error(status.status),
                           self._takes_context.get(version, False),
                           self._explain_takes_context.get(version, False))

    # --- the wire ----------------------------------------------------------------------------

    def _model_spec(self, ref: ModelRef, signature: str = "") -> Any:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature)
        if ref.version is not None:
            spec.version.value = ref.version
        elif ref.label:
            spec.version_label = ref.label
        return spec

    def _not_found(self, ref: ModelRef) -> type[DermserveError]:
        # NOT_FOUND for "latest" means TF Serving has no version loaded (yet): not serving.
        return ModelNotFound if ref.version is not None or ref.label else BackendUnavailable

    def _outputs(self, response: Any, count: int,
                 classes: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            probabilities = make_ndarray(response.outputs[PROBABILITIES_OUTPUT])
            ood_scores = make_ndarray(response.outputs[OOD_OUTPUT])
        except KeyError as exc:
            raise InternalError(f"TF Serving's answer lacks output {exc}") from exc
        if probabilities.shape != (count, classes) or ood_scores.shape != (count,):
            raise InternalError(f"TF Serving answered shapes {probabilities.shape} and "
                                f"{ood_scores.shape} for {count} images of {classes} classes")
        return probabilities.astype(np.float32), ood_scores.astype(np.float32)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout_s if timeout is None else timeout)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _channel_stubs(self) -> _Stubs:
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"the TF Serving backend for {self.target} is closed")
            if self._stubs is None:
                self._channel = (
                    grpc.secure_channel(self.target, self._credentials, self._channel_options)
                    if self._credentials is not None
                    else grpc.insecure_channel(self.target, self._channel_options))
                self._stubs = _Stubs(
                    prediction_service_pb2_grpc.PredictionServiceStub(self._channel),
                    model_service_pb2_grpc.ModelServiceStub(self._channel))
            return self._stubs

    def _call(self, what: str, method: Callable[[_Stubs], Any], request: Any, deadline: float,
              invalid_argument: type[DermserveError] = InternalError,
              not_found: type[DermserveError] = ModelNotFound) -> Any:
        """One RPC within `deadline`, retrying UNAVAILABLE with doubling backoff."""
        attempt = 0
        with upstream_errors(self.target, what, invalid_argument, not_found):
            while True:
                remaining = self._remaining(deadline)
                if remaining <= 0:
                    raise BackendTimeout(f"the model server did not answer {what} in time")
                try:
                    return method(self._channel_stubs())(request, timeout=remaining)
                except grpc.RpcError as exc:
                    pause = self._retry_pause(exc, attempt, deadline)
                    if pause is None:
                        raise
                    logger.info("TF Serving at %s unavailable for %s; retry %s in %.2fs",
                                self.target, what, attempt + 1, pause)
                    time.sleep(pause)
                    attempt += 1

    def _retry_pause(self, exc: grpc.RpcError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying `exc`, or None when it must not be retried."""
        if not isinstance(exc, grpc.Call) or exc.code() is not grpc.StatusCode.UNAVAILABLE:
            return None
        pause = self._retry_backoff_s * 2 ** attempt
        if attempt >= self._max_retries or time.monotonic() + pause >= deadline:
            return None
        return pause
