"""How the benchmark calls each server, from its own (the project's) environment: one image per
call, an answer of probabilities in the model's label order, so that every server's answer can be
checked against dermserve's before it is timed (run.py).

- v2 gRPC (KServe, MLServer): ModelInfer with one BYTES tensor of shape [1], over the stubs that
  grpc.protos_and_services compiles from grpc_predict_v2.proto on first use;
- BentoML's HTTP API: a multipart upload on one keep-alive connection, as a client session holds;
- dermserve: Classify (devtools/bench/harness.py's client), its answer put in label order."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from devtools.bench.harness import CALL_TIMEOUT_S, grpc_client, http_client
from devtools.bench.peers import grpc_predict_v2_pb2 as pb
from devtools.bench.peers import grpc_predict_v2_pb2_grpc as pb_grpc

Call = Callable[[], np.ndarray]
"""One call of a server with a fixed image: its probabilities, in the model's label order."""

V2_INPUT = "images"  # the BYTES input tensor; the peers read the first input, whatever its name


def v2_stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def v2_client(channel: grpc.Channel, model_name: str, image: bytes) -> Call:
    """ModelInfer of `image` on `model_name`; the FP32 output as (classes,) probabilities."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=V2_INPUT, datatype="BYTES", shape=[1], contents=pb.InferTensorContents(
            bytes_contents=[image]))
    request = pb.ModelInferRequest(model_name=model_name, inputs=[tensor])
    infer = v2_stub(channel).ModelInfer

    def call() -> np.ndarray:
        return v2_probabilities(infer(request, timeout=CALL_TIMEOUT_S))

    return call


def v2_probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    """The first output of a ModelInferResponse, raw (little-endian FP32) or as contents."""
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], "<f4").copy()
    return np.asarray(response.outputs[0].contents.fp32_contents, np.float32)


def v2_model_ready(channel: grpc.Channel, model_name: str, timeout_s: float) -> bool:
    """Whether the server says `model_name` is ready (waiting for the channel up to `timeout_s`)."""
    answer = v2_stub(channel).ModelReady(pb.ModelReadyRequest(name=model_name),
                                         timeout=timeout_s, wait_for_ready=True)
    return bool(answer.ready)


def multipart(field: str, data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of one file in `field`."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"image\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def bento_client(port: int, path: str, field: str, image: bytes) -> Call:
    """POST `image` as the one file of `field` to BentoML's `path`; its row of probabilities."""
    post = http_client(port, path, *multipart(field, image), "BentoML")

    def call() -> np.ndarray:
        return np.asarray(json.loads(post()), np.float32).reshape(-1)

    return call


def dermserve_client(channel: grpc.Channel, image: bytes, version: int,
                     labels: Sequence[str]) -> Call:
    """Classify of `image` on `version`; its probabilities in `labels`' order."""
    classify = grpc_client(channel, image, version)

    def call() -> np.ndarray:
        response: Any = classify()
        by_label = {entry.label: entry.probability for entry in response.probabilities}
        return np.asarray([by_label[label] for label in labels], np.float32)

    return call
