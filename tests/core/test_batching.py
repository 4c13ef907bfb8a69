"""The micro-batcher: merging, splitting, errors to every waiter, deadlines, limits, shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dermserve.core.backends.base import ModelRef
from dermserve.core.batching import MicroBatcher
from dermserve.core.errors import BackendTimeout, BackendUnavailable, ResourceExhausted
from tests.core.backends.helpers import wait_until
from tests.service.conftest import (
    WAIT_S,
    FakeBackend,
    good_jpeg,
    pb,
    running_server,
    server_settings,
)

REF = ModelRef("ham10000", version=2)


def images(n: int, value: int = 0) -> np.ndarray:
    return np.full((n, 16, 16, 3), value, np.uint8)


def marking_handler(version: int, batch: np.ndarray) -> np.ndarray:
    """Each row's first probability is its image's pixel value, so splits can be checked."""
    out = np.zeros((len(batch), 7), np.float32)
    out[:, 0] = batch[:, 0, 0, 0]
    return out


def concurrent_predicts(batcher: MicroBatcher, count: int) -> list[float]:
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(batcher.predict, REF, images(1, i), 5.0) for i in range(count)]
        return [float(f.result().probabilities[0, 0]) for f in futures]


def test_concurrent_calls_merge_and_each_gets_its_own_rows() -> None:
    backend = FakeBackend(handler=marking_handler)
    backend.delay_s = 0.05  # while one batch runs, the others queue up
    batcher = MicroBatcher(backend, max_batch_size=32, max_wait_ms=0)
    try:
        values = concurrent_predicts(batcher, 24)
    finally:
        batcher.close()
    assert values == [float(i) for i in range(24)]
    assert sum(backend.batch_sizes) == 24
    assert max(backend.batch_sizes) > 1
    assert len(backend.batch_sizes) < 24


def test_a_lone_caller_never_waits_for_company() -> None:
    backend = FakeBackend(handler=marking_handler)
    batcher = MicroBatcher(backend, max_batch_size=8, max_wait_ms=2000)
    try:
        started = time.monotonic()
        for value in range(3):
            batcher.predict(REF, images(1, value), 5.0)
        elapsed = time.monotonic() - started
    finally:
        batcher.close()
    assert elapsed < 1.0
    assert backend.batch_sizes == [1, 1, 1]


def test_a_returning_burst_is_gathered_into_one_batch() -> None:
    """Synchronous clients come back together after their batch; greedy batching would split
    them into a batch of one and a batch of the rest, the adaptive wait keeps them together."""
    backend = FakeBackend(handler=marking_handler)
    batcher = MicroBatcher(backend, max_batch_size=8, max_wait_ms=500)
    try:
        batcher.predict(REF, images(8), 5.0)  # the previous batch had 8 images
        backend.batch_sizes.clear()
        values = concurrent_predicts(batcher, 8)
    finally:
        batcher.close()
    assert values == [float(i) for i in range(8)]
    assert backend.batch_sizes == [8]


def test_the_wait_is_bounded_when_fewer_callers_return() -> None:
    backend = FakeBackend(handler=marking_handler)
    batcher = MicroBatcher(backend, max_batch_size=8, max_wait_ms=100)
    try:
        batcher.predict(REF, images(8), 5.0)
        started = time.monotonic()
        batcher.predict(REF, images(1), 5.0)
        waited = time.monotonic() - started
        batcher.predict(REF, images(1), 5.0)
        second = time.monotonic() - waited - started
    finally:
        batcher.close()
    assert 0.08 <= waited < 1.0  # expected 8, got 1: waited max_wait once
    assert second < 0.08  # the previous batch had one image: no wait now


def test_batch_size_is_capped() -> None:
    backend = FakeBackend(handler=marking_handler)
    backend.delay_s = 0.05
    batcher = MicroBatcher(backend, max_batch_size=5)
    try:
        concurrent_predicts(batcher, 20)
    finally:
        batcher.close()
    assert max(backend.batch_sizes) <= 5 and sum(backend.batch_sizes) == 20


def test_a_backend_error_reaches_every_waiter() -> None:
    backend = FakeBackend()
    backend.delay_s = 0.05
    backend.up = False
    batcher = MicroBatcher(backend, max_batch_size=8)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            batcher.predict(REF, images(1), 5.0)
        except BackendUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    batcher.close()
    assert len(errors) == 6
    assert len({id(e) for e in errors}) == 6  # one copy per caller


def test_a_caller_that_times_out_is_dropped_from_later_batches() -> None:
    backend = FakeBackend()
    backend.delay_s = 0.3
    batcher = MicroBatcher(backend, max_batch_size=8, workers=1)  # one dispatcher, kept busy
    try:
        first = threading.Thread(target=batcher.predict, args=(REF, images(1), 5.0))
        first.start()
        time.sleep(0.05)  # the first batch is running
        with pytest.raises(BackendTimeout):
            batcher.predict(REF, images(1), 0.1)
        first.join(5)
        time.sleep(0.1)
    finally:
        batcher.close()
    assert backend.batch_sizes == [1]


def test_a_full_queue_fails_fast() -> None:
    backend = FakeBackend()
    backend.delay_s = 0.3
    batcher = MicroBatcher(backend, max_batch_size=1, queue_limit=2, workers=1)  # kept busy
    try:
        threads = [threading.Thread(target=batcher.predict, args=(REF, images(1), 5.0))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        with pytest.raises(ResourceExhausted):
            batcher.predict(REF, images(1), 5.0)
        for thread in threads:
            thread.join(5)
    finally:
        batcher.close()


def test_two_dispatchers_run_two_batches_at_once() -> None:
    both_in_flight = threading.Barrier(2, timeout=10)

    def meet_the_other_batch(version: int, batch: np.ndarray) -> np.ndarray:
        both_in_flight.wait()  # breaks (BrokenBarrierError) unless another batch runs meanwhile
        return marking_handler(version, batch)

    backend = FakeBackend(handler=meet_the_other_batch)
    batcher = MicroBatcher(backend, max_batch_size=1, max_wait_ms=0, workers=2)
    try:
        values = concurrent_predicts(batcher, 2)
    finally:
        batcher.close()
    assert sorted(values) == [0.0, 1.0]
    assert backend.batch_sizes == [1, 1]


def test_close_finishes_queued_work_then_refuses_new_calls() -> None:
    backend = FakeBackend()
    batcher = MicroBatcher(backend)
    assert batcher.predict(REF, images(2), 5.0).probabilities.shape == (2, 7)
    batcher.close()
    assert backend.closed
    with pytest.raises(BackendUnavailable):
        batcher.predict(REF, images(1), 1.0)


def test_concurrent_rpcs_are_merged_through_the_server() -> None:
    backend = FakeBackend()
    batcher = MicroBatcher(backend, max_batch_size=32)
    with running_server(batcher, server_settings(health_interval_s=5.0)) as running:
        backend.delay_s = 0.05
        data = good_jpeg()
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(running.stub.Classify, pb.ClassifyRequest(image=data),
                                   timeout=10) for _ in range(32)]
            versions = {f.result().model.version for f in futures}
    batcher.close()
    assert versions == {2}
    # 32 calls plus the health monitor's one probe image, in fewer backend calls than images.
    assert sum(backend.batch_sizes) == 33
    assert max(backend.batch_sizes) > 1


def test_calls_with_and_without_context_share_a_batch_each_with_its_rows() -> None:
    """While the model runs a first call, three more queue: with context, without, with. They
    form one batch whose context has each caller's rows, the neutral row for the one without."""
    from dermserve.core.context import ContextBatch, patient_context

    backend = FakeBackend(handler=marking_handler)
    entered, release = threading.Event(), threading.Event()
    first_call = backend.handler

    def gated(version: int, batch: np.ndarray) -> np.ndarray:
        if not entered.is_set():
            entered.set()
            release.wait(WAIT_S)
        return first_call(version, batch)

    backend.handler = gated
    batcher = MicroBatcher(backend, max_batch_size=8, max_wait_ms=0, workers=1)
    rows = {1: ContextBatch.of([patient_context(30, "female", "back")]), 2: None,
            3: ContextBatch.of([patient_context(70, "male", "face")])}
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(batcher.predict, REF, images(1, 0), WAIT_S)
            assert entered.wait(WAIT_S)
            calls = [pool.submit(batcher.predict, REF, images(1, value), WAIT_S, rows[value])
                     for value in (1, 2, 3)]
            wait_until(lambda: batcher._queued_images == 3, WAIT_S, "three queued calls")
            release.set()
            values = [float(call.result().probabilities[0, 0]) for call in calls]
            first.result()
    finally:
        batcher.close()
    assert backend.batch_sizes == [1, 3] and values == [1.0, 2.0, 3.0]
    assert backend.contexts[0] is None  # nobody sent context: none is made up
    joined = backend.contexts[1]
    assert joined is not None
    assert joined.age_years.tolist() == [30.0, -1.0, 70.0]
    assert joined.sex.tolist() == [1, 0, 2] and joined.site.tolist() == [4, 0, 7]
