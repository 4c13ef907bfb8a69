"""The probes beside `make bench` (issue 13): the asyncio reference (devtools/aio_reference.py)
does Classify's work through a real batcher and answers like the front; its A/B
(devtools/aio_ab.py) judges each server on its own rounds; devtools/between_calls.py times only
what it says. Timings are the benchmark's business, not these tests'."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from core.backends.base import BatchOutput, ModelRef, VersionInfo, VersionState
from core.backends.embedded import EmbeddedBackend
from core.errors import BackendUnavailable
from core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.v1 import lesion_classifier_pb2 as pb
from devtools import aio_ab, aio_reference, bench, between_calls
from tests.conftest import TINY_MODEL_NAME, tiny_config
from tests.devtools.test_bench import jpeg


class CountingBackend:
    """Predicts uniform probabilities and records each batch's size; `failure` is raised
    instead when set."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.failure: Exception | None = None

    def predict(self, ref: ModelRef, images: np.ndarray,
                timeout: float | None = None) -> BatchOutput:
        if self.failure is not None:
            raise self.failure
        self.batch_sizes.append(len(images))
        info = VersionInfo(ref.name, ref.version or 1, VersionState.AVAILABLE, tiny_config())
        return BatchOutput(info, np.full((len(images), 7), 1 / 7, np.float32),
                           np.arange(len(images), dtype=np.float32))


def predict_all(backend: CountingBackend, count: int) -> list[tuple[np.ndarray, float]]:
    """`count` concurrent predicts through a batcher of one worker and batches of two."""
    async def run() -> list[tuple[np.ndarray, float]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = aio_reference.AsyncBatcher(backend, ModelRef("m", 1), pool,  # type: ignore[arg-type]
                                                 max_batch=2, workers=1)
            images = [np.full((4, 4, 3), index, np.uint8) for index in range(count)]
            return await asyncio.gather(*(batcher.predict(image) for image in images))
    return asyncio.run(run())


def test_the_batcher_starts_a_lone_call_at_once_and_batches_the_calls_that_wait() -> None:
    backend = CountingBackend()
    answers = predict_all(backend, 5)
    # The first call finds the worker free; the other four queue behind it in twos.
    assert backend.batch_sizes == [1, 2, 2]
    # Each caller gets its own row: the fake's OOD score is the row's index in its batch.
    assert [score for _, score in answers] == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert all(probabilities.shape == (7,) for probabilities, _ in answers)


def test_a_failed_batch_fails_every_caller_in_it_and_the_batcher_goes_on() -> None:
    backend = CountingBackend()
    backend.failure = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        predict_all(backend, 3)
    backend.failure = None
    assert len(predict_all(backend, 3)) == 3


@pytest.fixture
def reference(model_base: Path) -> Iterator[int]:
    """The reference on the tiny model, on an event loop of its own thread; yields its port."""
    backend = EmbeddedBackend(model_base, TINY_MODEL_NAME)
    backend.start()
    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(2)
    started = threading.Event()
    state: dict[str, object] = {}

    async def start() -> None:
        server, port = aio_reference.create_server("127.0.0.1:0", backend, TINY_MODEL_NAME,
                                                   pool)
        await server.start()
        state.update(server=server, port=port)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield int(state["port"])  # type: ignore[call-overload]
    finally:
        server = state["server"]
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        pool.shutdown()
        backend.close()


def test_the_reference_answers_concurrent_classify_calls_like_the_front(reference: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{reference}") as channel:
        call = bench.grpc_client(channel, jpeg((96, 72)), 2)
        with ThreadPoolExecutor(6) as clients:
            answers = list(clients.map(lambda _: call(), range(6)))
    for answer in answers:
        assert isinstance(answer, pb.ClassifyResponse)
        assert sorted(item.label for item in answer.probabilities) == sorted(HAM10000_DISPLAY_NAMES)
        assert answer.model.version == 2  # the latest of the tiny versions
        assert sum(item.probability for item in answer.probabilities) == pytest.approx(1.0, 1e-5)
    assert len({answer.request_id for answer in answers}) == 6


def test_the_reference_refuses_what_is_not_an_image(reference: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{reference}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            bench.grpc_client(channel, b"not an image", 2)()
    # No error mapping in the reference (it leaves the interceptors out): the call fails.
    assert raised.value.code() is grpc.StatusCode.UNKNOWN


def paired(p50_ratio: float, throughput_ratio: float, cpu: float) -> dict[str, object]:
    return {"rounds": [{"p50_c1_over_raw_single_plus_decode": p50_ratio,
                        "throughput_c32_over_raw_best_batch": throughput_ratio,
                        "raw_batch_cpu_ms_per_image": 10.0}],
            "served_32": {"server_cpu_ms_per_call": cpu,
                          "server_cpu_ms_per_call_by_thread": {"python": cpu - 9.0,
                                                               "tf_Compute": 9.0}}}


def test_the_ab_summary_takes_the_median_of_each_servers_own_rounds() -> None:
    summary = aio_ab.summarise([paired(1.3, 0.8, 12.0), paired(1.1, 0.9, 11.0),
                                paired(1.2, 1.0, 13.0)])
    assert summary["p50_c1_over_raw_single_plus_decode"] == pytest.approx(1.2)
    assert summary["throughput_c32_over_raw_best_batch"] == pytest.approx(0.9)
    assert summary["server_cpu_ms_per_call_c32"] == pytest.approx(12.0)
    assert summary["server_cpu_ms_per_call_c32_by_thread"] == pytest.approx(
        {"python": 3.0, "tf_Compute": 9.0})
    assert summary["raw_batch_cpu_ms_per_image"] == pytest.approx(10.0)
    assert len(summary["rounds"]) == 3


def test_the_between_calls_helpers_time_only_the_call_and_take_turns() -> None:
    order: list[str] = []
    latencies = between_calls.timed(lambda: order.append("call"), lambda: order.append("before"),
                                    calls=2)
    assert len(latencies) == 2  # the warm-up calls are not kept
    assert order == ["before", "call"] * (between_calls.WARM_UP + 2)
    order.clear()
    first, second = between_calls.interleaved(lambda: order.append("a"),
                                              lambda: order.append("b"), calls=3)
    assert (len(first), len(second)) == (3, 3)
    assert order == ["a", "b"] * (between_calls.WARM_UP + 3)


def test_between_calls_reports_both_comparisons_on_a_real_model(model_base: Path,
                                                                 tmp_path: Path) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(jpeg((96, 72)))
    args = between_calls.parse_args(["--out", str(tmp_path / "out.json"), "--model-base",
                                     str(model_base), "--image", str(image), "--calls", "3"])
    result = between_calls.run(args)
    assert result["model"] == {"name": TINY_MODEL_NAME, "version": 2}
    for part in ("decode", "model_call", "model_input"):
        figures = [figure for figure in result[part].values() if isinstance(figure, dict)]
        assert len(figures) == 2
        assert all(figure["calls"] == 3 and figure["p50_ms"] > 0 for figure in figures)
    assert len(between_calls.report_lines(result)) == 3
