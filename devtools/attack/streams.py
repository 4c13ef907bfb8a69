"""Stream families: hostile request ids, a client that does not read its answers, idle streams
past the per-client and total caps, and the unauthenticated health Watch flood. Each opens its
streams one after the other and reads each to its first answer or refusal, so which ones the
server refuses does not depend on a race."""

from __future__ import annotations

import queue
from collections import Counter
from contextlib import ExitStack
from functools import partial

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.service.classify_stream import STREAM_WINDOW
from dermserve.service.defaults import (
    DEFAULT_GRPC_WORKERS,
    DEFAULT_MAX_HEALTH_WATCHES,
    DEFAULT_MAX_STREAMS_PER_CLIENT,
)
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack import corpus, proc
from devtools.attack.calls import (
    AUTH,
    CALL_TIMEOUT_S,
    Counted,
    bearer,
    classify,
    stream_item,
    wait_for,
)
from devtools.attack.record import Record
from devtools.attack.stack import TOKENS, Stack

HELD_TIMEOUT_S = 110.0
"""Deadline of a stream the attack holds open: long enough for a family to finish on a loaded
machine, short of the 120 s idle timeout so that no stream ends STREAM_IDLE mid-family."""
MAX_STREAMS = DEFAULT_GRPC_WORKERS // 2  # the default --max-streams: half the threads
PENDING = "dermserve_stream_images_pending"
FILL_MARGIN_S = 20.0  # seconds of a held stream's deadline left for checks once it is full
SLOW_READER = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096))
"""A client that grants a 4 KiB receive window and never widens it: its unread answers stop the
server's sending."""


def request_ids(stack: Stack, record: Record, quick: bool) -> None:
    """Each hostile id on Classify (refused INVALID_REQUEST_ID), then all of them inside one
    ClassifyStream between two good ids: each gets an error answer and the stream goes on."""
    family = "request_ids"
    image = corpus.good_jpeg()
    hostile = corpus.request_ids(quick)
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, request_id in hostile:
            outcome = record.attempt(family, f"unary-{name}",
                                     partial(classify, stub, image, request_id))
            record.expect(family, outcome == ("INVALID_ARGUMENT", "INVALID_REQUEST_ID"),
                          f"Classify answered a {name} request id with {outcome}")
        requests = [stream_item(image, "good-1"),
                    *(stream_item(image, request_id) for _, request_id in hostile),
                    stream_item(image, "good-2")]
        answers = record.call(family, "stream", lambda: list(stub.ClassifyStream(
            iter(requests), metadata=AUTH, timeout=CALL_TIMEOUT_S * 3)))
    for answer in answers or []:
        error = answer.error if answer.WhichOneof("outcome") == "error" else None
        record.add(family, "stream-answer", f"STREAM:{error.code if error else 'OK'}",
                   error.reason if error else "")
    good = sorted(a.request_id for a in answers or [] if a.WhichOneof("outcome") == "result")
    refused = [(a.request_id, a.error.reason) for a in answers or []
               if a.WhichOneof("outcome") == "error"]
    record.expect(family, good == ["good-1", "good-2"] and refused == [
        ("", "INVALID_REQUEST_ID")] * len(hostile),
        "the stream did not refuse each hostile id and go on with the good ones")


def unread_answers(stack: Stack, record: Record, quick: bool) -> None:
    """A client sends ~0.8 MB images down a ClassifyStream and never reads an answer: the server
    must stop reading at its window (16 images) instead of queueing (934 MB before)."""
    family = "unread_answers"
    sends = 300 if quick else 3000
    image = corpus.heavy_jpeg()
    front = stack.pid("front")
    before = proc.rss_mb(front)
    requests = Counted(stream_item(image, f"unread-{index}") for index in range(sends))
    with stack.channel(options=SLOW_READER) as channel:
        call = pb_grpc.LesionClassifierStub(channel).ClassifyStream(
            iter(requests), metadata=AUTH, timeout=HELD_TIMEOUT_S)
        # Each pending image was classified first: on a loaded machine 16 heavy images can take
        # longer than WAIT_S (a clean CI run saw 14 after 30 s), so wait up to the stream's own
        # deadline, less a margin for the checks below.
        filled = wait_for(lambda: stack.metric(PENDING) >= STREAM_WINDOW,
                          timeout_s=HELD_TIMEOUT_S - FILL_MARGIN_S)
        pending = stack.metric(PENDING)
        record.measure(family, "images_sent", sends)
        record.measure(family, "images_taken_by_grpc", requests.taken)
        record.measure(family, "front_rss_growth_mb", round(proc.rss_mb(front) - before, 1))
        call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
    record.add(family, "unread", "CANCELLED")
    record.measure(family, "pending_at_window", pending)
    record.expect(family, filled and pending == STREAM_WINDOW,
                  f"the server held {pending:.0f} unanswered images, not its window of "
                  f"{STREAM_WINDOW}")
    record.expect(family, requests.taken < sends, "the server read the whole unread stream")
    record.expect(family, wait_for(lambda: stack.metric(PENDING) == 0),
                  "a cancelled stream's images stayed pending")


class IdleStream:
    """A ClassifyStream that sends one image, reads its answer, and then sends nothing."""

    def __init__(self, stub: pb_grpc.LesionClassifierStub, token: str) -> None:
        self.feed: queue.SimpleQueue[pb.ClassifyStreamRequest | None] = queue.SimpleQueue()
        self.feed.put(stream_item(corpus.good_jpeg(), "first"))
        self.call = stub.ClassifyStream(iter(self.feed.get, None), metadata=bearer(token),
                                        timeout=HELD_TIMEOUT_S)

    def first(self) -> pb.ClassifyStreamResponse:
        answer: pb.ClassifyStreamResponse = next(iter(self.call))
        return answer

    def close(self) -> None:
        self.feed.put(None)
        self.call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped


def idle_streams(stack: Stack, record: Record, quick: bool) -> None:
    """Five clients (tokens) each open 10 streams and leave them idle: each client may hold 8
    (TOO_MANY_CLIENT_STREAMS past them) and all of them 32 (TOO_MANY_STREAMS), and every
    client's unary Classify still answers while they are held."""
    family = "idle_streams"
    image = corpus.good_jpeg()
    accepted: dict[str, int] = {}
    with ExitStack() as held:
        for name, token in TOKENS.items():
            channel = held.enter_context(stack.channel())
            stub = pb_grpc.LesionClassifierStub(channel)
            for _ in range(DEFAULT_MAX_STREAMS_PER_CLIENT + 2):
                stream = IdleStream(stub, token)
                held.callback(stream.close)
                first = record.call(family, f"{name}-stream", stream.first)
                accepted[name] = accepted.get(name, 0) + (first is not None)
            answer = record.call(family, f"{name}-unary-while-held", partial(
                classify, stub, image, "", bearer(token)))
            record.expect(family, answer is not None,
                          f"{name}'s Classify failed while its streams were held")
    record.measure(family, "accepted_per_client", accepted)
    expect_refusals(record, family, sum(accepted.values()), MAX_STREAMS, max(accepted.values()))


def expect_refusals(record: Record, family: str, accepted: int, total: int,
                    most_by_one: int) -> None:
    reasons = record.reasons.get(family, Counter())
    record.expect(family, accepted <= total, f"{accepted} streams held, over the cap of {total}")
    record.expect(family, most_by_one <= DEFAULT_MAX_STREAMS_PER_CLIENT,
                  f"one client held {most_by_one} streams")
    for reason in ("TOO_MANY_STREAMS", "TOO_MANY_CLIENT_STREAMS"):
        record.expect(family, reasons.get(f"RESOURCE_EXHAUSTED/{reason}", 0) > 0,
                      f"no stream was refused {reason}")


def health_flood(stack: Stack, record: Record, quick: bool) -> None:
    """Health Watch needs no token. Clients with certificates of their own (5, or 12: the 96+
    watches of the report) each open 9 watches on the main port: 8 per client and 32 in all are
    held, the rest refused; then 10 watches from one address on the plaintext health port (8
    held). While they are held an authorised Classify answers and probes still say SERVING."""
    family = "health_flood"
    certificates = stack.client_certificates(5 if quick else 12)
    accepted: dict[str, int] = {}
    with ExitStack() as held:
        for index, certificate in enumerate(certificates):
            channel = held.enter_context(stack.channel(certificate=certificate))
            accepted[f"client-{index}"] = open_watches(
                record, health_pb2_grpc.HealthStub(channel), DEFAULT_MAX_STREAMS_PER_CLIENT + 1,
                held)
        expect_refusals(record, family, sum(accepted.values()), DEFAULT_MAX_HEALTH_WATCHES,
                        max(accepted.values()))
        plaintext = held.enter_context(grpc.insecure_channel(f"127.0.0.1:{stack.health_port}"))
        probes = health_pb2_grpc.HealthStub(plaintext)
        on_probe_port = open_watches(record, probes, DEFAULT_MAX_STREAMS_PER_CLIENT + 2, held)
        record.expect(family, on_probe_port == DEFAULT_MAX_STREAMS_PER_CLIENT,
                      f"one address held {on_probe_port} watches on the health port")
        with stack.channel() as channel:
            answer = record.call(family, "classify-during-flood", partial(
                classify, pb_grpc.LesionClassifierStub(channel), corpus.good_jpeg()))
        record.expect(family, answer is not None, "an authorised Classify failed during the flood")
        status = record.call(family, "probe-during-flood", lambda: probes.Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status)
        record.expect(family, status == health_pb2.HealthCheckResponse.SERVING,
                      "the health port stopped answering SERVING during the flood")
    record.measure(family, "watches_held_per_client", accepted)


def open_watches(record: Record, health: health_pb2_grpc.HealthStub, count: int,
                 held: ExitStack) -> int:
    """Open `count` watches one after the other, each read to its first status or refusal;
    how many were held."""
    opened = 0
    for _ in range(count):
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=HELD_TIMEOUT_S)
        held.callback(watch.cancel)
        opened += record.call("health_flood", "watch", partial(next, watch)) is not None
    return opened

