"""A REFERENCE for the benchmark, not product code: Classify on grpc.aio, to measure what moving
the front from gRPC's thread-per-call server onto one asyncio event loop would gain.

Per call it does the front's work on the embedded backend: the core's validation and
reduced-scale decode (`decode_for_model`, on the event loop: no thread hand-off), one row of
a micro-batch through the same EmbeddedBackend, and the same response (`build_prediction`,
`to_response`). The batcher is an asyncio one: calls queue on the loop, and up to
DEFAULT_BATCH_WORKERS batches of at most DEFAULT_BATCH_MAX_SIZE images run at once in a thread
pool of that size; a call that finds a free worker starts a batch at once, so a lone call never
waits. It leaves out what the front adds around that work: interceptors (error mapping, auth,
stream limits), metrics, the decode budget, model selection by version or label, health, streams
and drain. Its figures are therefore a bound on what the change could gain, not a front.

`python -m devtools.aio_reference --port N` (devtools.aio_ab starts it and stops it with SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from core import defaults
from core.backends.base import Backend, ModelRef
from core.backends.embedded import EmbeddedBackend
from core.backends.savedmodel import configure_threads
from core.image.decoding import decode_for_model
from core.image.limits import ImageLimits
from core.model_config import ModelConfig
from core.prediction import build_prediction
from dermserve.v1 import lesion_classifier_pb2 as pb
from service.servicer import to_response

Waiting = tuple[np.ndarray, "asyncio.Future[tuple[np.ndarray, float]]"]


class AsyncBatcher:
    """Micro-batches predict calls made on one event loop; the model runs in `pool`."""

    def __init__(self, backend: Backend, ref: ModelRef, pool: ThreadPoolExecutor,
                 max_batch: int = defaults.DEFAULT_BATCH_MAX_SIZE,
                 workers: int = defaults.DEFAULT_BATCH_WORKERS) -> None:
        self._backend, self._ref, self._pool = backend, ref, pool
        self._max_batch, self._workers = max_batch, workers
        self._queue: list[Waiting] = []
        self._running = 0

    async def predict(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(probabilities, OOD score) of one preprocessed image."""
        answer: asyncio.Future[tuple[np.ndarray, float]] = (
            asyncio.get_running_loop().create_future())
        self._queue.append((image, answer))
        self._start_batches()
        return await answer

    def _start_batches(self) -> None:
        while self._queue and self._running < self._workers:
            batch = self._queue[:self._max_batch]
            del self._queue[:self._max_batch]
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[Waiting]) -> None:
        try:
            images = np.stack([image for image, _ in batch])
            output = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._backend.predict, self._ref, images)
            for row, (_, answer) in enumerate(batch):
                answer.set_result((output.probabilities[row], float(output.ood_scores[row])))
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            for _, answer in batch:
                answer.set_exception(exc)
        finally:
            self._running -= 1
            self._start_batches()


class ClassifyReference:
    """Classify's work on one version, on the event loop."""

    def __init__(self, backend: Backend, model_name: str, pool: ThreadPoolExecutor) -> None:
        info = backend.resolve(ModelRef(model_name))
        if info.config is None:
            raise RuntimeError(f"{model_name} version {info.version} has no config")
        self._config: ModelConfig = info.config
        self._model_name, self._version = model_name, info.version
        self._batcher = AsyncBatcher(backend, ModelRef(model_name, info.version), pool)
        self._limits = ImageLimits()

    async def classify(self, request: pb.ClassifyRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.ClassifyResponse:
        image = decode_for_model(request.image, self._limits, self._config.input)
        probabilities, ood_score = await self._batcher.predict(image)
        return to_response(build_prediction(uuid.uuid4().hex, self._model_name, self._version,
                                            self._config, probabilities, ood_score))

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        service = pb.DESCRIPTOR.services_by_name["LesionClassifier"].full_name
        return grpc.method_handlers_generic_handler(service, {
            "Classify": grpc.unary_unary_rpc_method_handler(
                self.classify, request_deserializer=pb.ClassifyRequest.FromString,
                response_serializer=pb.ClassifyResponse.SerializeToString)})


def create_server(address: str, backend: Backend, model_name: str,
                  pool: ThreadPoolExecutor) -> tuple[grpc.aio.Server, int]:
    """The reference bound to `address` (port 0 picks one), not started, and its port. Call it
    on the event loop that will run the server."""
    server = grpc.aio.server(handlers=[ClassifyReference(backend, model_name, pool).handler()],
                             options=[("grpc.so_reuseport", 0)])
    return server, server.add_insecure_port(address)


async def serve(port: int, backend: Backend, model_name: str) -> None:
    """Run on 127.0.0.1:`port` until SIGTERM."""
    with ThreadPoolExecutor(defaults.DEFAULT_BATCH_WORKERS, thread_name_prefix="model") as pool:
        server, _ = create_server(f"127.0.0.1:{port}", backend, model_name, pool)
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        await server.start()
        await stopped.wait()
        await server.stop(None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.aio_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    args = parser.parse_args(argv)
    configure_threads(defaults.DEFAULT_INTRA_OP_THREADS, defaults.DEFAULT_INTER_OP_THREADS)
    backend = EmbeddedBackend(args.model_base, args.model_name)
    backend.start()
    try:
        asyncio.run(serve(args.port, backend, args.model_name))
    finally:
        backend.close()


if __name__ == "__main__":
    main()
