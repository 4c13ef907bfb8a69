"""The attack families. Each takes the running stack and a `Record` and makes bounded attempts; an
outcome is a status code name ("OK", "INVALID_ARGUMENT", ...) or, for an answer inside a stream,
"STREAM:<code>". Nothing here waits on time for synchronisation: every call carries a deadline."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.v1 import batch_jobs_pb2 as jobs_pb
from dermserve.v1 import batch_jobs_pb2_grpc as jobs_grpc
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from tools.attack import corpus
from tools.attack.stack import TOKEN, Stack

CALL_TIMEOUT_S = 10.0  # seconds; a generous deadline for any one hostile call
JOB_TIMEOUT_S = 60.0  # seconds a hostile batch job may take to end (a few images each)
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Record:
    """Outcomes per family, plus the attempts that ended INTERNAL or UNKNOWN (by name)."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, family: str, attempt: str, outcome: str) -> None:
        with self._lock:
            self.outcomes.setdefault(family, Counter())[outcome] += 1
            if outcome.split(":")[-1] in {"INTERNAL", "UNKNOWN"}:
                self.internal.append(f"{family}/{attempt}")

    def call(self, family: str, attempt: str, call: Callable[[], object]) -> None:
        try:
            call()
            self.add(family, attempt, "OK")
        except grpc.RpcError as error:
            self.add(family, attempt, error.code().name)


def classify(stub: pb_grpc.LesionClassifierStub, image: bytes, request_id: str = "",
             metadata: tuple[tuple[str, str], ...] = AUTH) -> object:
    return stub.Classify(pb.ClassifyRequest(image=image, request_id=request_id),
                         metadata=metadata, timeout=CALL_TIMEOUT_S)


def images(stack: Stack, record: Record, quick: bool) -> None:
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, data in corpus.hostile_images(quick):
            record.call("images", name, partial(classify, stub, data))


def request_ids(stack: Stack, record: Record, quick: bool) -> None:
    image = corpus.good_jpeg()
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, request_id in corpus.request_ids(quick):
            record.call("request_ids", f"unary-{name}",
                        partial(classify, stub, image, request_id))
            record.call("request_ids", f"stream-{name}",
                        partial(stream_once, stub, record, image, request_id))


def stream_once(stub: pb_grpc.LesionClassifierStub, record: Record, image: bytes,
                request_id: str) -> None:
    request = pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=image,
                                                                  request_id=request_id))
    for answer in stub.ClassifyStream(iter([request]), metadata=AUTH, timeout=CALL_TIMEOUT_S):
        if answer.WhichOneof("outcome") == "error":
            record.add("request_ids", "stream-answer", f"STREAM:{answer.error.code}")


def references(stack: Stack, record: Record, quick: bool) -> None:
    corpus.reference_tree(stack.input_root)
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        for name, paths in corpus.hostile_references():
            request = jobs_pb.SubmitBatchJobRequest(files=jobs_pb.FileReferences(paths=paths))
            record.call("references", name,
                        partial(submit_and_read, stub, request, quick))
        for name, kind, value in corpus.hostile_manifests():
            manifest = jobs_pb.Manifest(**{kind: value})
            request = jobs_pb.SubmitBatchJobRequest(manifest=manifest)
            record.call("references", name,
                        partial(submit_and_read, stub, request, quick))


def submit_and_read(stub: jobs_grpc.BatchJobsStub, request: jobs_pb.SubmitBatchJobRequest,
                    quick: bool) -> None:
    """Submit, read the job, and (full mode) watch it to its end within JOB_TIMEOUT_S, then
    read its first page of results: what a client does. A stalled job ends DEADLINE_EXCEEDED."""
    job = stub.SubmitBatchJob(request, metadata=AUTH, timeout=CALL_TIMEOUT_S).job
    stub.GetBatchJob(jobs_pb.GetBatchJobRequest(job_id=job.job_id), metadata=AUTH,
                     timeout=CALL_TIMEOUT_S)
    if not quick:
        for update in stub.WatchBatchJob(jobs_pb.WatchBatchJobRequest(job_id=job.job_id),
                                         metadata=AUTH, timeout=JOB_TIMEOUT_S):
            if update.job.state >= jobs_pb.BATCH_JOB_STATE_SUCCEEDED:
                break
    stub.ListBatchJobResults(jobs_pb.ListBatchJobResultsRequest(job_id=job.job_id),
                             metadata=AUTH, timeout=CALL_TIMEOUT_S)


def auth_bypass(stack: Stack, record: Record, quick: bool) -> None:
    image = corpus.good_jpeg()
    attempts: list[tuple[str, tuple[tuple[str, str], ...]]] = [
        ("no-token", ()),
        ("wrong-token", (("authorization", "Bearer not-the-token"),)),
        ("token-without-bearer", (("authorization", TOKEN),)),
        ("token-in-other-header", (("x-api-key", TOKEN),)),
        ("basic-scheme", (("authorization", f"Basic {TOKEN}"),)),
        ("token-prefix", (("authorization", f"Bearer {TOKEN[:-1]}"),)),
    ]
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, metadata in attempts:
            record.call("auth", name, partial(classify, stub, image, "", metadata))
    with stack.channel(client_cert=False) as channel:  # mutual TLS: no client certificate
        record.call("auth", "no-client-certificate",
                    lambda: classify(pb_grpc.LesionClassifierStub(channel), image))
    with grpc.insecure_channel(f"127.0.0.1:{stack.health_port}") as channel:
        record.call("auth", "classify-on-health-port",
                    lambda: classify(pb_grpc.LesionClassifierStub(channel), image))
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:  # plaintext to TLS
        record.call("auth", "plaintext-to-tls-port",
                    lambda: classify(pb_grpc.LesionClassifierStub(channel), image))


def stream_abuse(stack: Stack, record: Record, quick: bool) -> None:
    """A client that sends and never reads, and idle streams that send nothing."""
    image = corpus.good_jpeg()
    sends = 100 if quick else 2000
    idle = 8 if quick else 80
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        unread = stub.ClassifyStream(repeat_requests(image, sends), metadata=AUTH,
                                     timeout=CALL_TIMEOUT_S)
        release = threading.Event()
        idles = [stub.ClassifyStream(never_send(release), metadata=AUTH,
                                     timeout=CALL_TIMEOUT_S) for _ in range(idle)]
        record.call("stream_abuse", "unary-beside-abuse", lambda: classify(stub, image))
        for call in (unread, *idles):
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
            record.add("stream_abuse", "cancelled-by-client", "CANCELLED")
        release.set()


def repeat_requests(image: bytes, count: int) -> Iterator[pb.ClassifyStreamRequest]:
    for index in range(count):
        yield pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=image,
                                                                  request_id=f"unread-{index}"))


def never_send(release: threading.Event) -> Iterator[pb.ClassifyStreamRequest]:
    release.wait()  # an idle client: no request until the attack is over
    yield from ()


def health_flood(stack: Stack, record: Record, quick: bool) -> None:
    """Health Watch streams need no token; while they are open, authorised calls must work."""
    count = 16 if quick else 96
    image = corpus.good_jpeg()
    with stack.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                   for _ in range(count)]
        stub = pb_grpc.LesionClassifierStub(channel)
        record.call("health_flood", "classify-during-flood", lambda: classify(stub, image))
        for watch in watches:
            watch.cancel()
            record.add("health_flood", "watch", "CANCELLED")


FAMILIES: dict[str, Callable[[Stack, Record, bool], None]] = {
    "auth": auth_bypass,
    "images": images,
    "request_ids": request_ids,
    "references": references,
    "stream_abuse": stream_abuse,
    "health_flood": health_flood,
}
