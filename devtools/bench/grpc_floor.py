"""A REFERENCE FLOOR for the benchmark, not product code: the cheapest server that speaks
dermserve's Classify, so `make bench` can show how much of a served call's cost is Python gRPC
itself, which no handler written on it can go below.

A grpc.server with a thread pool (as the front's), serving LesionClassifier's Classify alone: it
parses the request and answers one canned response of a real answer's size (seven classes with
their display names, a model, a request id). No interceptors, no validation, no decoding, no
model; other methods answer UNIMPLEMENTED.

`python -m devtools.bench.grpc_floor --port N` (devtools.bench.run starts it and stops it with
SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from dermserve.core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.service.defaults import DEFAULT_GRPC_WORKERS
from dermserve.v1 import lesion_classifier_pb2 as pb

WORKERS = DEFAULT_GRPC_WORKERS  # threads, as the front's: the same hand-off per call


def canned_response() -> pb.ClassifyResponse:
    """An answer of the size the front sends for a JPEG: every HAM10000 class, a version."""
    share = 1.0 / len(HAM10000_DISPLAY_NAMES)
    return pb.ClassifyResponse(
        probabilities=[pb.LabelProbability(label=label, display_name=name, probability=share)
                       for label, name in HAM10000_DISPLAY_NAMES.items()],
        top_label=next(iter(HAM10000_DISPLAY_NAMES)),
        model=pb.ModelVersionRef(name="ham10000", version=1),
        request_id="0" * 32)


def classify_handler() -> grpc.GenericRpcHandler[Any, Any]:
    """LesionClassifier with Classify alone, answering the canned response at once."""
    response = canned_response()

    def classify(request: pb.ClassifyRequest,
                 context: grpc.ServicerContext) -> pb.ClassifyResponse:
        return response

    service = pb.DESCRIPTOR.services_by_name["LesionClassifier"].full_name
    return grpc.method_handlers_generic_handler(service, {
        "Classify": grpc.unary_unary_rpc_method_handler(
            classify, request_deserializer=pb.ClassifyRequest.FromString,
            response_serializer=pb.ClassifyResponse.SerializeToString)})


def create_server(address: str) -> tuple[grpc.Server, int]:
    """The floor bound to `address` (port 0 picks a free one), not started, and its port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS),
                         handlers=[classify_handler()], options=[("grpc.so_reuseport", 0)])
    return server, server.add_insecure_port(address)


def serve(port: int) -> None:
    """Run on 127.0.0.1:`port` until SIGTERM."""
    server, _ = create_server(f"127.0.0.1:{port}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    server.start()
    stop.wait()
    server.stop(None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.grpc_floor",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
