"""The soak's load: unary Classify at a fixed concurrency, ClassifyStreams, and ListModels every
second, each generator on a gRPC channel of its own; every call is recorded (method, status code,
start and end) in one CallLog. Calls are closed-loop: a thread sends its next call when the last
one ends, so the load follows what the stack can do instead of queueing without bound."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools import proc

CALL_TIMEOUT_S = 30.0  # seconds per Classify or ListModels call: far above p99 under this load
STREAM_IMAGES = 32  # images per ClassifyStream before it is closed and another opened
LIST_MODELS_INTERVAL_S = 1.0  # seconds between ListModels calls
ERROR_PAUSE_S = 1.0  # seconds a generator waits after a failed call, as a client backing off would
OK = grpc.StatusCode.OK.name
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
"""Reconnect within a second of the front coming back, as a client that knows its server restarts
would; gRPC's default backoff grows to two minutes."""


@dataclass(frozen=True)
class Call:
    """One finished call: seconds since the soak began."""

    method: str
    code: str
    start_s: float
    end_s: float
    version: int = 0  # the model version that answered a Classify, 0 otherwise


class CallLog:
    """Every call of the soak, appended from the load threads."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def record(self, method: str, code: str, start_s: float, version: int = 0) -> None:
        call = Call(method, code, start_s, self.now(), version)
        with self.lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


def stream_outcome(answers: Sequence[pb.ClassifyStreamResponse]) -> str:
    """OK when every image sent was classified; else the first image error's code and reason,
    or INCOMPLETE when the stream ended with images unanswered."""
    for answer in answers:
        if answer.HasField("error"):
            return f"{answer.error.code}:{answer.error.reason}"
    return OK if len(answers) == STREAM_IMAGES else "INCOMPLETE"


def open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


class Load:
    """The load generators of one soak; `start()` them, then `stop()`."""

    def __init__(self, target: str, images: Sequence[bytes], log: CallLog,
                 concurrency: int, streams: int) -> None:
        self.images = list(images)
        self.log = log
        self.stopping = threading.Event()
        self.unary_channel = open_channel(target)
        self.channels = [self.unary_channel] + [open_channel(target) for _ in range(streams + 1)]
        unary = pb_grpc.LesionClassifierStub(self.unary_channel)
        self.threads = [threading.Thread(target=self._unary, args=(unary, offset), daemon=True,
                                         name=f"unary-{offset}") for offset in range(concurrency)]
        self.threads += [threading.Thread(
            target=self._stream, args=(pb_grpc.LesionClassifierStub(channel),), daemon=True,
            name=f"stream-{index}") for index, channel in enumerate(self.channels[1:-1])]
        self.threads.append(threading.Thread(
            target=self._list_models, args=(pb_grpc.LesionClassifierStub(self.channels[-1]),),
            daemon=True, name="list-models"))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT_S * 2)
        for channel in self.channels:
            channel.close()

    def _pause_after(self, code: str) -> None:
        if code != OK:
            self.stopping.wait(ERROR_PAUSE_S)

    def _unary(self, stub: pb_grpc.LesionClassifierStub, offset: int) -> None:
        for index in itertools.count(offset):
            if self.stopping.is_set():
                return
            request = pb.ClassifyRequest(image=self.images[index % len(self.images)])
            start = self.log.now()
            try:
                version = stub.Classify(request, timeout=CALL_TIMEOUT_S).model.version
                code = OK
            except grpc.RpcError as error:
                version, code = 0, error.code().name
            self.log.record("Classify", code, start, version)
            self._pause_after(code)

    def _stream_requests(self) -> Iterator[pb.ClassifyStreamRequest]:
        for index in range(STREAM_IMAGES):
            image = self.images[index % len(self.images)]
            yield pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=image))

    def _stream(self, stub: pb_grpc.LesionClassifierStub) -> None:
        while not self.stopping.is_set():
            start = self.log.now()
            try:
                answers = list(stub.ClassifyStream(self._stream_requests(),
                                                   timeout=CALL_TIMEOUT_S * 4))
                code = stream_outcome(answers)
            except grpc.RpcError as error:
                code = error.code().name
            self.log.record("ClassifyStream", code, start)
            self._pause_after(code)

    def _list_models(self, stub: pb_grpc.LesionClassifierStub) -> None:
        while not self.stopping.wait(LIST_MODELS_INTERVAL_S):
            start = self.log.now()
            try:
                stub.ListModels(pb.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
                code = OK
            except grpc.RpcError as error:
                code = error.code().name
            self.log.record("ListModels", code, start)


RSS_INTERVAL_S = 5.0  # seconds between samples of every process's resident memory


@dataclass(frozen=True)
class RssSample:
    """Resident memory of one process at one time (seconds since the soak began)."""

    t_s: float
    name: str
    pid: int
    rss_mb: float


def rss_mb(pid: int) -> float | None:
    """The resident set of `pid`, in MB (10^6 bytes); None once it is gone."""
    rss = proc.rss_bytes(pid)
    return None if rss is None else rss / 1e6


class RssSampler:
    """Samples every `pids()` process every RSS_INTERVAL_S on a thread of its own."""

    def __init__(self, pids: Callable[[], dict[str, int]], log: CallLog) -> None:
        self.pids = pids
        self.log = log
        self.samples: list[RssSample] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def sample(self) -> None:
        now = self.log.now()
        for name, pid in self.pids().items():
            rss = rss_mb(pid)
            if rss is not None:
                self.samples.append(RssSample(now, name, pid, rss))

    def _run(self) -> None:
        while True:
            self.sample()
            if self.stopping.wait(RSS_INTERVAL_S):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
