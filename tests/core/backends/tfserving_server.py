"""A stand-in for TensorFlow Serving in tests: its real gRPC API over real SavedModels.

It speaks tensorflow_serving.apis' PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus) on 127.0.0.1, answered by an EmbeddedBackend over a model base, and behaves as
TF Serving does where dermserve relies on it: `model_spec.version` / `version_label` /
`signature_name` (serving_default, metadata, and explain where the version has it) /
`output_filter` are honoured, the answer names the version in
`model_spec.version`, an unknown version (or no version loaded) is NOT_FOUND, an unknown label is
INVALID_ARGUMENT "Unrecognized servable version label", and GetModelMetadata returns the
SignatureDefs read from the version's saved_model.pb.

Use it from any test:

    from tests.core.backends.tfserving_server import start_fake_tfserving
    server = start_fake_tfserving(model_base, "ham10000")   # port=0: an ephemeral port
    backend = TFServingBackend(server.target, "ham10000")
    ...
    server.stop()

or the `fake_tfserving` fixture in tests/core/backends/conftest.py. Knobs for failure tests:
`delay_s` (every RPC waits this long first), `fail_next` (that many RPCs answer UNAVAILABLE),
and `calls` (a Counter of RPCs received, by method name).
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dermserve.core.backends.base import ModelRef
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.backends.tensor_protos import make_ndarray, make_tensor
from dermserve.core.backends.version_dirs import UNKNOWN_LABEL_REASON
from dermserve.core.context import ContextBatch
from dermserve.core.errors import BackendUnavailable, DermserveError, InvalidInput, ModelNotFound

SERVER_WORKERS = 8
"""Threads answering RPCs: enough for the concurrency the tests drive."""

_STATE_CODES = {name: value for name, value in
                get_model_status_pb2.ModelVersionStatus.State.items()}


class FakeTFServing:
    """A running stand-in server; `target` is "127.0.0.1:<port>"."""

    def __init__(self, backend: EmbeddedBackend, model_base: Path, port: int = 0) -> None:
        self.backend = backend
        self.model_base = Path(model_base)
        self.delay_s = 0.0
        self.fail_next = 0
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(SERVER_WORKERS))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self),
                                                                  self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{port}")
        self.target = f"127.0.0.1:{self.port}"
        self._server.start()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop answering (in-flight RPCs are cancelled after `grace_s`) and unload models."""
        self._stopping.set()
        self._server.stop(grace_s).wait()
        self.backend.close()

    def enter(self, method: str, context: grpc.ServicerContext) -> None:
        """Count the call, then apply the failure knobs."""
        with self._lock:
            self.calls[method] += 1
            failing = self.fail_next > 0
            self.fail_next -= int(failing)
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected outage")
        if self.delay_s > 0:
            self._stopping.wait(self.delay_s)

    def abort(self, context: grpc.ServicerContext, ref: ModelRef,
              error: DermserveError) -> None:
        """Answer `error` as TF Serving would."""
        if isinstance(error, ModelNotFound) and error.reason == UNKNOWN_LABEL_REASON:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Unrecognized servable version label: {ref.label}")
        if isinstance(error, ModelNotFound | BackendUnavailable):
            request = (f"Specific({ref.name}, {ref.version})" if ref.version is not None
                       else f"Latest({ref.name})")
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: {request}")
        if isinstance(error, InvalidInput):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
        context.abort(grpc.StatusCode.INTERNAL, error.message)

    def signature_defs(self, version: int) -> Any:
        """The SignatureDefs of a version, from its saved_model.pb (what TF Serving returns)."""
        saved_model = saved_model_pb2.SavedModel()
        path = self.model_base / self.backend.model_name / str(version) / "saved_model.pb"
        saved_model.ParseFromString(path.read_bytes())
        return saved_model.meta_graphs[0].signature_def


def model_ref(spec: Any) -> ModelRef:
    which = spec.WhichOneof("version_choice")
    return ModelRef(spec.name,
                    version=int(spec.version.value) if which == "version" else None,
                    label=spec.version_label if which == "version_label" else None)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, server: FakeTFServing) -> None:
        self.server = server

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.server.enter("Predict", context)
        ref = model_ref(request.model_spec)
        signature = request.model_spec.signature_name or "serving_default"
        try:
            if signature == "serving_default":
                version, outputs = self._serve(request, ref)
            elif signature == "metadata":
                version, outputs = self._metadata(request, ref)
            elif signature in self.server.signature_defs(self.server.backend.resolve(ref).version):
                version, outputs = self._explain(request, ref)
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Serving signature name: \"{signature}\" not found in signature def")
        except DermserveError as error:
            self.server.abort(context, ref, error)
        wanted = list(request.output_filter) or list(outputs)
        unknown = set(wanted) - set(outputs)
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"output tensor alias not found in signature: {sorted(unknown)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = ref.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature
        for name in wanted:
            response.outputs[name].CopyFrom(make_tensor(outputs[name]))
        return response

    def _inputs(self, request: Any, ref: ModelRef, signature: str,
                ) -> tuple[ModelRef, dict[str, np.ndarray], ContextBatch | None]:
        """As TF Serving: every input the signature declares must be sent, and nothing else."""
        version = self.server.backend.resolve(ref).version
        declared = set(self.server.signature_defs(version)[signature].inputs)
        if set(request.inputs) != declared:
            raise InvalidInput(f"inputs {sorted(request.inputs)} do not match the signature's "
                               f"{sorted(declared)}")
        inputs = {name: make_ndarray(tensor) for name, tensor in request.inputs.items()}
        context = (ContextBatch(inputs["age_years"], inputs["sex"], inputs["site"])
                   if "age_years" in inputs else None)
        return ModelRef(ref.name, version=version), inputs, context

    def _serve(self, request: Any, ref: ModelRef) -> tuple[int, dict[str, np.ndarray]]:
        pinned, inputs, context = self._inputs(request, ref, "serving_default")
        out = self.server.backend.predict(pinned, inputs["image"], context=context)
        return out.version.version, {"probabilities": out.probabilities,
                                     "ood_score": out.ood_scores}

    def _explain(self, request: Any, ref: ModelRef) -> tuple[int, dict[str, np.ndarray]]:
        pinned, inputs, context = self._inputs(request, ref, "explain")
        out = self.server.backend.explain(pinned, inputs["image"], inputs["class_index"],
                                          context=context)
        return out.version.version, {"heatmap": out.heatmaps, "probabilities": out.probabilities,
                                     "ood_score": out.ood_scores,
                                     "class_index": out.class_indices}

    def _metadata(self, request: Any, ref: ModelRef) -> tuple[int, dict[str, np.ndarray]]:
        info = self.server.backend.resolve(ref)
        assert info.config is not None
        count = len(make_ndarray(request.inputs["probe"]))
        labels = np.array([[label.encode() for label in info.config.labels]] * count,
                          dtype=object)
        config = np.array([info.config.to_json().encode()] * count, dtype=object)
        return info.version, {"labels": labels.reshape(count, -1), "config": config}

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.server.enter("GetModelMetadata", context)
        ref = model_ref(request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "Metadata field signature_def must be requested")
        try:
            version = self.server.backend.resolve(ref).version
        except DermserveError as error:
            self.server.abort(context, ref, error)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.server.signature_defs(version).items():
            signatures.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ref.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signatures)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, server: FakeTFServing) -> None:
        self.server = server

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.server.enter("GetModelStatus", context)
        ref = model_ref(request.model_spec)
        try:
            versions = self.server.backend.list_versions(ref.name)
        except DermserveError as error:
            self.server.abort(context, ref, error)
        if ref.version is not None:
            versions = [info for info in versions if info.version == ref.version]
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Could not find any versions of model {ref.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for info in versions:
            status = response.model_version_status.add(version=info.version,
                                                      state=_STATE_CODES[info.state.value])
            if info.error:
                status.status.error_code = 2  # tensorflow.error.Code.UNKNOWN
                status.status.error_message = info.error
        return response


def start_fake_tfserving(model_base: Path, model_name: str, port: int = 0,
                         **backend_options: Any) -> FakeTFServing:
    """Load `model_base/model_name` into an EmbeddedBackend and serve it on 127.0.0.1:`port`.

    `backend_options` go to EmbeddedBackend (poll_interval_s, version_labels, ...)."""
    backend = EmbeddedBackend(model_base, model_name, **backend_options)
    backend.start()
    try:
        return FakeTFServing(backend, model_base, port)
    except BaseException:
        backend.close()
        raise
