"""Stream abuse against the real server: the health-watch flood, idle and surplus streams, hostile
request ids, clients that do not read, cancelled streams, and a drain with a stream open."""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dermserve.core.tls import channel_credentials
from dermserve.service.classify_stream import STREAM_WINDOW
from dermserve.service.logs import TEXT_FORMAT, RequestIdFilter
from dermserve.service.settings import SecuritySettings, Settings, StreamSettings
from dermserve.service.status import cancelled_by_client
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack.pki import client_certificate
from tests.pki import make_pki
from tests.service.conftest import (
    WAIT_S,
    FakeBackend,
    Running,
    default_handler,
    good_jpeg,
    pb,
    reason_of,
    running_server,
    server_settings,
    wait_until,
)

TOKENS = [f"tok-{i}" for i in range(10)]
CALL_TIMEOUT_S = 30.0  # seconds; far longer than any wait below, so a hang fails the test


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def token_settings(tmp_path: Path, streams: StreamSettings, **changes: object) -> Settings:
    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(TOKENS) + "\n")
    return server_settings(security=SecuritySettings(auth_tokens_file=tokens),
                           streams=streams, **changes)


def item(request_id: str = "", image: bytes | None = None) -> pb.ClassifyStreamRequest:
    return pb.ClassifyStreamRequest(request=pb.ClassifyRequest(
        image=good_jpeg() if image is None else image, request_id=request_id))


class Feed:
    """The requests of one stream, sent when the test says; close() half-closes it."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[pb.ClassifyStreamRequest | None] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[pb.ClassifyStreamRequest]:
        while (request := self._items.get()) is not None:
            yield request

    def send(self, request: pb.ClassifyStreamRequest) -> None:
        self._items.put(request)

    def close(self) -> None:
        self._items.put(None)


class OpenStream:
    """A ClassifyStream that sent one image and read its answer: open, counted, then idle."""

    def __init__(self, running: Running, token: str | None,
                 stub: pb_grpc.LesionClassifierStub | None = None) -> None:
        self.feed = Feed()
        self.feed.send(item("first"))
        self.call = (stub or running.stub).ClassifyStream(
            iter(self.feed), metadata=bearer(token) if token else (), timeout=CALL_TIMEOUT_S)

    def first(self) -> pb.ClassifyStreamResponse:
        answer: pb.ClassifyStreamResponse = next(self.call)
        return answer

    def close(self) -> None:
        self.feed.close()
        self.call.cancel()


def refusal(action: object) -> tuple[grpc.StatusCode, str | None] | None:
    """(code, reason) when calling `action` raises an RpcError, else None."""
    try:
        action()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code(), reason_of(error)  # type: ignore[attr-defined]
    return None


def open_in_turn(streams: Iterable[OpenStream]) -> tuple[
        list[OpenStream], list[tuple[grpc.StatusCode, str | None] | None]]:
    """Open the streams one after the other, each read up to its first answer or refusal before
    the next starts: which of two streams opened at once a cap refuses is a race."""
    opened, outcomes = [], []
    for stream in streams:  # a generator: each stream starts only when the previous one answered
        outcomes.append(refusal(stream.first))
        opened.append(stream)
    return opened, outcomes


def open_watches(health: health_pb2_grpc.HealthStub, count: int) -> tuple[list[object], list[
        tuple[grpc.StatusCode, str | None] | None]]:
    """Open `count` health watches one after the other, each read up to its first status or
    its refusal, so that which ones are refused does not depend on a race."""
    watches, outcomes = [], []
    for _ in range(count):
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        watches.append(watch)
        outcomes.append(refusal(lambda watch=watch: next(watch)))
    return watches, outcomes


def sample(running: Running, name: str, labels: dict[str, str] | None = None) -> float | None:
    return running.metrics.registry.get_sample_value(name, labels or {})


# --- defect 1: the unauthenticated health-watch flood ---------------------------------------------
def test_a_flood_of_health_watches_leaves_authorised_calls_their_threads(tmp_path: Path) -> None:
    # 8 threads and 40 watches: each watch used to pin a thread, so the 9th never started and
    # Classify timed out. Now a watch holds no thread, and past 24 they are refused.
    streams = StreamSettings(max_streams=4, max_per_client=40, max_health_watches=24)
    settings = token_settings(tmp_path, streams, grpc_workers=8)
    with running_server(FakeBackend(), settings) as running:
        health = health_pb2_grpc.HealthStub(running.channel)
        watches, outcomes = open_watches(health, 40)
        assert outcomes[:24] == [None] * 24  # each got its first status
        assert outcomes[24:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")] * 16
        answer = running.stub.Classify(pb.ClassifyRequest(image=good_jpeg()),
                                       metadata=bearer("tok-1"), timeout=5)
        assert answer.top_label == "bcc"
        for watch in watches:
            watch.cancel()
        # Cancelled watches give their slots back: 24 fresh ones open again (health calls are
        # left out of the request metrics, so the slots themselves are what is watched).
        assert wait_until(lambda: every_watch_opens(health, 24))
        again = health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert next(again).status in (health_pb2.HealthCheckResponse.SERVING,
                                      health_pb2.HealthCheckResponse.NOT_SERVING)
        again.cancel()
        assert sample(running, "dermserve_requests_total",
                      {"method": "Watch", "code": "CANCELLED"}) is None


def every_watch_opens(health: health_pb2_grpc.HealthStub, count: int) -> bool:
    """Whether `count` watches opened one after the other all get their first status; they are
    cancelled again either way."""
    watches, outcomes = open_watches(health, count)
    for watch in watches:
        watch.cancel()
    return outcomes == [None] * count


def test_one_address_cannot_hold_every_health_watch(fake_backend: FakeBackend) -> None:
    settings = server_settings(streams=StreamSettings(max_per_client=3, max_health_watches=10))
    with running_server(fake_backend, settings) as running:
        watches, outcomes = open_watches(health_pb2_grpc.HealthStub(running.channel), 4)
        assert outcomes == [None] * 3 + [(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          "TOO_MANY_CLIENT_STREAMS")]
        for watch in watches:
            watch.cancel()


# --- defect 6: idle and surplus streams ----------------------------------------------------
def test_idle_streams_cannot_take_the_threads_of_unary_calls(tmp_path: Path) -> None:
    # 8 threads: 16 idle authorised streams from 8 clients used to take all of them.
    streams = StreamSettings(max_streams=4, max_per_client=2)
    settings = token_settings(tmp_path, streams, grpc_workers=8)
    with running_server(FakeBackend(), settings) as running:
        opened: list[OpenStream] = []
        outcomes = []
        for token in TOKENS[:8]:
            for _ in range(2):
                stream = OpenStream(running, token)
                opened.append(stream)
                outcomes.append(refusal(stream.first))
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        assert outcomes[:4] == [None] * 4  # tok-0 and tok-1 hold the four stream slots
        assert outcomes[4:] == [(exhausted, "TOO_MANY_STREAMS")] * 12
        third = OpenStream(running, "tok-0")
        opened.append(third)
        assert refusal(third.first) == (exhausted, "TOO_MANY_CLIENT_STREAMS")
        for token in TOKENS:  # every client still has unary calls
            answer = running.stub.Classify(pb.ClassifyRequest(image=good_jpeg()),
                                           metadata=bearer(token), timeout=5)
            assert answer.top_label == "bcc"
        for stream in opened:
            stream.close()


def test_the_per_client_cap_counts_the_identity_a_call_acts_as(tmp_path: Path) -> None:
    # One definition of a client for stream caps and job ownership (service.auth.caller_of):
    # two tokens with one name are one client (each token used to be a client of its own).
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-a1 name=alice\ntok-a2 name=alice\ntok-b name=bob\n")
    settings = server_settings(security=SecuritySettings(auth_tokens_file=tokens),
                               streams=StreamSettings(max_per_client=1))
    with running_server(FakeBackend(), settings) as running:
        opened, outcomes = open_in_turn(OpenStream(running, token)
                                        for token in ("tok-a1", "tok-a2", "tok-b"))
        for stream in opened:
            stream.close()
    assert outcomes == [None, (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CLIENT_STREAMS"),
                        None]


def test_without_tokens_each_client_certificate_is_one_client(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = client_certificate(pki, "clinic-b")
    security = SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                tls_client_ca=pki.ca)
    settings = server_settings(security=security, streams=StreamSettings(max_per_client=1))
    with running_server(FakeBackend(), settings) as running:
        stubs = [pb_grpc.LesionClassifierStub(grpc.secure_channel(
            f"localhost:{running.port}", channel_credentials(pki.ca, cert, key)))
            for cert, key in [(pki.client_cert, pki.client_key)] * 2 + [other]]
        # one address, two subjects
        opened, outcomes = open_in_turn(OpenStream(running, None, stub) for stub in stubs)
        for stream in opened:
            stream.close()
    assert outcomes == [None, (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CLIENT_STREAMS"),
                        None]


def test_an_idle_stream_ends_with_stream_idle_and_gives_its_slot_back(tmp_path: Path) -> None:
    streams = StreamSettings(max_streams=1, max_per_client=1, idle_timeout_s=0.3)
    with running_server(FakeBackend(), token_settings(tmp_path, streams)) as running:
        idle = OpenStream(running, "tok-0")
        assert idle.first().request_id == "first"
        ended = refusal(lambda: next(idle.call))  # the client sends nothing more
        assert ended == (grpc.StatusCode.DEADLINE_EXCEEDED, "STREAM_IDLE")
        assert wait_until(lambda: sample(running, "dermserve_requests_total", {
            "method": "ClassifyStream", "code": "DEADLINE_EXCEEDED"}) == 1.0)
        following = OpenStream(running, "tok-0")
        assert following.first().WhichOneof("outcome") == "result"
        following.close()


def test_a_stream_blocked_without_polling_is_cancelled_once_idle(fake_backend: FakeBackend,
                                                                  ) -> None:
    # Reflection waits in its client's next request and never asks is_active: the reaper
    # cancels it shortly after the idle timeout, and its slot comes back.
    streams = StreamSettings(max_streams=1, idle_timeout_s=0.2)
    with running_server(fake_backend, server_settings(streams=streams)) as running:
        reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
        ask = Feed()
        ask.send(reflection_pb2.ServerReflectionRequest(list_services=""))  # type: ignore[arg-type]
        listing = reflection.ServerReflectionInfo(iter(ask), timeout=CALL_TIMEOUT_S)
        assert next(listing).list_services_response.service
        assert refusal(lambda: next(listing)) == (grpc.StatusCode.CANCELLED, None)
        stream = running.stub.ClassifyStream(iter([item("after")]), timeout=CALL_TIMEOUT_S)
        assert [answer.request_id for answer in stream] == ["after"]
        ask.close()


def test_the_plaintext_health_port_limits_watches_too(fake_backend: FakeBackend) -> None:
    settings = server_settings(health_listen_address="127.0.0.1:0",
                               streams=StreamSettings(max_per_client=2))
    with running_server(fake_backend, settings) as running:
        port = running.server.health_port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watches, outcomes = open_watches(health_pb2_grpc.HealthStub(channel), 3)
            for watch in watches:
                watch.cancel()
    assert outcomes == [None, None, (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     "TOO_MANY_CLIENT_STREAMS")]


def test_max_streams_must_leave_threads_for_unary_calls() -> None:
    with pytest.raises(SystemExit) as caught:
        Settings.from_sources(["--grpc-workers", "8", "--max-streams", "8"])
    assert caught.value.code == 2
    settings = Settings.from_sources([], {"DERMSERVE_MAX_STREAMS": "3",
                                          "DERMSERVE_STREAM_IDLE_TIMEOUT_S": "9.5"})
    assert (settings.stream_limit, settings.streams.idle_timeout_s) == (3, 9.5)
    assert Settings.from_sources(["--grpc-workers", "16"]).stream_limit == 8  # a user's old flag
    assert Settings.from_sources([]).stream_limit == 32


# --- defect 5: request ids, and clients that do not read ----------------------------------------
@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """The server's text log format, as `--log-format text` writes it."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_hostile_request_ids_are_refused_before_use(fake_server: Running,
                                                    text_log: io.StringIO) -> None:
    hostile = ["forged\n2026-12-01 00:00:00 CRITICAL service.auth token accepted",
               "x" * 1_000_000, "y" * 5_000_000, "bell\x07", "rtl\u202eoverride"]
    requests = [item("good-1"), *(item(request_id) for request_id in hostile), item("good-2")]
    answers = list(fake_server.stub.ClassifyStream(iter(requests), timeout=CALL_TIMEOUT_S))
    results = sorted(a.request_id for a in answers if a.WhichOneof("outcome") == "result")
    errors = [a for a in answers if a.WhichOneof("outcome") == "error"]
    assert results == ["good-1", "good-2"]
    assert [(a.request_id, a.error.code, a.error.reason) for a in errors] == [
        ("", "INVALID_ARGUMENT", "INVALID_REQUEST_ID")] * len(hostile)
    lines = text_log.getvalue().splitlines()
    assert lines, "the refusals are logged"
    assert not [line for line in lines if "CRITICAL" in line.split(" ", 3)[2:3]]
    assert max(len(line) for line in lines) < 1_000


def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    # The client grants a 4 KiB receive window (a slow link): its unread answers stop the
    # server's sending, and the server must then stop reading instead of queueing answers.
    photos: list[int] = []

    def counting(version: int, images: np.ndarray) -> np.ndarray:
        photos.append(int((images.reshape(len(images), -1).max(axis=1) > 0).sum()))
        return default_handler(version, images)  # the health probe's blank images not counted

    sent = 3000
    with running_server(FakeBackend(handler=counting)) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}", options=[
            ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)])
        stub = pb_grpc.LesionClassifierStub(channel)
        call = stub.ClassifyStream(iter([item(f"img-{i}") for i in range(sent)]),
                                   timeout=CALL_TIMEOUT_S * 4)
        assert wait_until(lambda: sample(running, "dermserve_stream_images_pending")
                          == STREAM_WINDOW, timeout_s=CALL_TIMEOUT_S)
        assert sum(photos) < sent // 3  # read no further than the window past the answers sent
        ids = [answer.request_id for answer in call]  # now read: every image, exactly once
        channel.close()
        assert sorted(ids) == sorted(f"img-{i}" for i in range(sent))
        assert sample(running, "dermserve_stream_images_pending") == 0.0


# --- defect 12: a cancelled stream is CANCELLED, not INTERNAL ------------------------------
def test_cancelled_streams_are_counted_cancelled_and_not_logged_as_errors(
        fake_server: Running, caplog: pytest.LogCaptureFixture) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(fake_server.channel)
    ask = Feed()
    ask.send(reflection_pb2.ServerReflectionRequest(list_services=""))  # type: ignore[arg-type]
    listing = reflection.ServerReflectionInfo(iter(ask), timeout=CALL_TIMEOUT_S)
    assert next(listing).list_services_response.service  # as grpcurl does, then it hangs up
    listing.cancel()
    classify = Feed()
    classify.send(item("one"))
    stream = fake_server.stub.ClassifyStream(iter(classify), timeout=CALL_TIMEOUT_S)
    assert next(stream).request_id == "one"
    stream.cancel()
    for method in ("ServerReflectionInfo", "ClassifyStream"):
        assert wait_until(lambda method=method: sample(fake_server, "dermserve_requests_total", {
            "method": method, "code": "CANCELLED"}) == 1.0), method
        assert sample(fake_server, "dermserve_requests_total",
                      {"method": method, "code": "INTERNAL"}) is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def echo_server(outcomes: queue.SimpleQueue[bool]) -> tuple[grpc.Server, int]:
    """A bare server whose one stream echoes bytes and, at each call's termination, puts whether
    `cancelled_by_client` says the client cancelled it."""
    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(lambda: outcomes.put(cancelled_by_client(context)))
        yield from requests

    handler = grpc.method_handlers_generic_handler("probe.Echo", {
        "Talk": grpc.stream_stream_rpc_method_handler(echo)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_the_installed_grpc_records_which_streams_their_clients_cancelled() -> None:
    """Pins `cancelled_by_client`, which reads grpc's private record of a call (there is no public
    one): a grpc that renamed it would count every cancelled stream by the old, racy reading."""
    outcomes: queue.SimpleQueue[bool] = queue.SimpleQueue()
    server, port = echo_server(outcomes)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            talk = channel.stream_stream("/probe.Echo/Talk")
            assert list(talk(iter([b"a", b"b"]), timeout=CALL_TIMEOUT_S)) == [b"a", b"b"]
            assert outcomes.get(timeout=CALL_TIMEOUT_S) is False
            feed: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
            feed.put(b"a")
            call = talk(iter(feed.get, None), timeout=CALL_TIMEOUT_S)
            assert next(call) == b"a"
            call.cancel()
            assert outcomes.get(timeout=CALL_TIMEOUT_S) is True
    finally:
        server.stop(None).wait()


# --- defect 16: SIGTERM's drain stops reading open streams ----------------------------------------
class Gate:
    """A backend handler that holds every photo until opened, counting the photos it got."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.photos = 0
        self._lock = threading.Lock()

    def __call__(self, version: int, images: np.ndarray) -> np.ndarray:
        count = int((images.reshape(len(images), -1).max(axis=1) > 0).sum())
        if count:
            with self._lock:
                self.photos += count
            assert self.opened.wait(WAIT_S * 4)
        return default_handler(version, images)


def test_a_drain_stops_reading_open_streams_and_answers_what_they_accepted() -> None:
    gate = Gate()
    settings = replace(server_settings(), grace_period_s=WAIT_S * 4)
    with running_server(FakeBackend(handler=gate), settings) as running:
        feed = Feed()
        for i in range(3):
            feed.send(item(f"before-{i}"))
        call = running.stub.ClassifyStream(iter(feed), timeout=CALL_TIMEOUT_S)
        assert wait_until(lambda: gate.photos == 3)
        stopper = threading.Thread(target=running.server.stop, args=(settings.grace_period_s,))
        stopper.start()
        assert wait_until(running.server.drain.begun)
        for i in range(5):  # sent during the drain: never read
            feed.send(item(f"after-{i}"))
        gate.opened.set()
        answers = []
        with pytest.raises(grpc.RpcError) as caught:
            for answer in call:
                answers.append(answer)
        stopper.join(WAIT_S * 4)
        assert not stopper.is_alive()
    assert sorted(a.request_id for a in answers) == [f"before-{i}" for i in range(3)]
    assert all(a.WhichOneof("outcome") == "result" for a in answers)
    assert (caught.value.code(), reason_of(caught.value)) == (grpc.StatusCode.UNAVAILABLE,
                                                              "SERVER_DRAINING")
    assert gate.photos == 3
