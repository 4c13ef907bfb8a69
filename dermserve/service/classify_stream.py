"""The machinery of one ClassifyStream: read images with flow control, answer them on a pool,
hand the answers to gRPC, and stop reading when the server begins to drain.

A reader thread accepts an image only while fewer than `window` accepted images still lack a
delivered answer (delivered: handed to gRPC). A client that does not read its answers therefore
stops being read, HTTP/2 flow control then stops its sending, and the server holds at most
`window` images and answers for it, instead of a queue that grew by 934 MB.

When the server begins to stop (`StreamDrain.begin`), a stream accepts no more images, delivers
the answer of every image it accepted, and ends with UNAVAILABLE (reason SERVER_DRAINING) if the
client was still sending: the images without an answer were never read and can go to another
server. A stream whose client had finished sending ends OK as usual.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc

from dermserve.core.errors import ServerDraining
from dermserve.v1 import lesion_classifier_pb2 as pb

log = logging.getLogger(__name__)

STREAM_WINDOW = 16
"""Images of one ClassifyStream accepted and not yet answered to gRPC, at most: enough to fill
micro-batches from a single stream, few enough that one stream cannot take every worker thread
or hold much memory for a client that does not read."""

POLL_S = 0.5
"""Seconds the answer loop waits before asking whether the call is still active: the idle
timeout (service/streams.py) and a vanished client end the stream within this much."""

Answer = Callable[[pb.ClassifyRequest], pb.ClassifyStreamResponse]
"""Classifies one image; never raises (a failure is the answer's `error`)."""


class PendingObserver(Protocol):
    """Told how many accepted images gain or lose a pending answer (service/metrics.py)."""

    def stream_images_pending(self, delta: int) -> None: ...


class StreamDrain:
    """Tells the open ClassifyStreams that the server has begun to stop."""

    def __init__(self) -> None:
        self._begun = threading.Event()
        self._lock = threading.Lock()
        self._wakers: set[Callable[[], None]] = set()

    def begin(self) -> None:
        with self._lock:
            self._begun.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def begun(self) -> bool:
        return self._begun.is_set()

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` when the drain begins; returns the unsubscribe function."""
        with self._lock:
            self._wakers.add(wake)
        return lambda: self._unsubscribe(wake)

    def _unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.discard(wake)


_WAKE = pb.ClassifyStreamResponse()  # a wake-up call on the answer queue, never delivered


class StreamSession:
    """One ClassifyStream call (see the module docstring)."""

    def __init__(self, answer: Answer, pool: ThreadPoolExecutor, drain: StreamDrain,
                 observer: PendingObserver | None = None, window: int = STREAM_WINDOW) -> None:
        self.answer = answer
        self.pool = pool
        self.drain = drain
        self.observer = observer
        self.window = window
        self._answers: queue.SimpleQueue[pb.ClassifyStreamResponse] = queue.SimpleQueue()
        self._room = threading.Semaphore(window)
        self._lock = threading.Lock()
        self._accepted = 0
        self._delivered = 0
        self._reading = True
        self._closed = False
        self._cut_short = False  # the drain stopped the reading while the client was sending

    def run(self, requests: Iterator[pb.ClassifyStreamRequest],
            context: grpc.ServicerContext) -> Iterator[pb.ClassifyStreamResponse]:
        unsubscribe = self.drain.subscribe(self._wake)
        threading.Thread(target=self._read, args=(requests,), name="classify-stream-reader",
                         daemon=True).start()
        try:
            yield from self._deliver(context)
        finally:
            self._close()
            unsubscribe()

    # --- the handler thread ----------------------------------------------------------------------
    def _deliver(self, context: grpc.ServicerContext) -> Iterator[pb.ClassifyStreamResponse]:
        while not self._finished():
            try:
                answer = self._answers.get(timeout=POLL_S)
            except queue.Empty:
                if not context.is_active():  # idled out, or the client is gone
                    return
                continue
            if answer is _WAKE:
                continue
            yield answer
            self._count_delivered()
        if self._cut_short:
            raise ServerDraining("the server is stopping: every image read was answered; "
                                 "send the others to another server")

    def _finished(self) -> bool:
        """True once every accepted image is answered and no more will be accepted; from then
        on the reader accepts nothing."""
        with self._lock:
            done = self._delivered == self._accepted and (not self._reading or
                                                          self.drain.begun())
            if done:
                self._cut_short = self._cut_short or self._reading
                self._closed = True
            return done

    def _count_delivered(self) -> None:
        with self._lock:
            self._delivered += 1
        self._room.release()
        self._observe(-1)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            undelivered = self._accepted - self._delivered
            self._delivered = self._accepted
        self._observe(-undelivered)
        for _ in range(self.window):  # a reader waiting for room wakes, and sees the close
            self._room.release()

    # --- the reader thread -----------------------------------------------------------------------
    def _read(self, requests: Iterator[pb.ClassifyStreamRequest]) -> None:
        try:
            for item in requests:
                self._room.acquire()  # flow control: wait until an answer was delivered
                if not self._accept():
                    break
                self._submit(item.request)
        except grpc.RpcError:
            log.info("ClassifyStream: the client went away")
        finally:
            with self._lock:
                self._reading = False
            self._wake()

    def _accept(self) -> bool:
        with self._lock:
            if self.drain.begun():
                self._cut_short = True
            if self._closed or self.drain.begun():
                return False
            self._accepted += 1
        self._observe(1)
        return True

    def _submit(self, request: pb.ClassifyRequest) -> None:
        try:
            self.pool.submit(lambda: self._answers.put(self.answer(request)))
        except RuntimeError:  # the pool is shut down, so the server is stopping: answer here
            self._answers.put(self.answer(request))

    def _wake(self) -> None:
        self._answers.put(_WAKE)

    def _observe(self, delta: int) -> None:
        if self.observer is not None and delta:
            self.observer.stream_images_pending(delta)
