"""The attack families, in the order they run. Each takes the running stack, a `Record` and
`quick`, makes bounded attempts, and records their outcomes and the promises they test
(devtools/attack/record.py). The auth bypass attempts are here; the others live by subject in
images.py, streams.py, jobs.py and web.py."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc

from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.attack import corpus, images, jobs, streams, web
from devtools.attack.calls import Metadata, bearer, classify
from devtools.attack.record import Record
from devtools.attack.stack import JOBS_ONLY_TOKEN, TOKEN, Stack

REFUSED = {"UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "UNIMPLEMENTED"}
"""What an auth bypass may end with: refused, or no connection at all (TLS)."""


def auth_bypass(stack: Stack, record: Record, quick: bool) -> None:
    image = corpus.good_jpeg()
    attempts: list[tuple[str, Metadata]] = [
        ("no-token", ()),
        ("wrong-token", bearer("not-the-token")),
        ("token-without-bearer", (("authorization", TOKEN),)),
        ("token-in-other-header", (("x-api-key", TOKEN),)),
        ("basic-scheme", (("authorization", f"Basic {TOKEN}"),)),
        ("token-prefix", bearer(TOKEN[:-1])),
        ("jobs-only-token-on-classify", bearer(JOBS_ONLY_TOKEN)),
    ]
    with stack.channel() as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        for name, metadata in attempts:
            record.call("auth", name, partial(classify, stub, image, "", metadata))
    with stack.channel(client_cert=False) as channel:  # mutual TLS: no client certificate
        record.call("auth", "no-client-certificate",
                    partial(classify, pb_grpc.LesionClassifierStub(channel), image))
    with grpc.insecure_channel(f"127.0.0.1:{stack.health_port}") as channel:
        record.call("auth", "classify-on-health-port",
                    partial(classify, pb_grpc.LesionClassifierStub(channel), image))
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:  # plaintext to TLS
        record.call("auth", "plaintext-to-tls-port",
                    partial(classify, pb_grpc.LesionClassifierStub(channel), image))
    let_in = set(record.outcomes["auth"]) - REFUSED
    record.expect("auth", not let_in, f"a bypass attempt ended {sorted(let_in)}")


FAMILIES: dict[str, Callable[[Stack, Record, bool], None]] = {
    "auth": auth_bypass,
    "images": images.images,
    "scan_bomb": images.scan_bomb,
    "large_jpegs": images.large_jpegs,
    "dicom_bombs": images.dicom_bombs,
    "request_ids": streams.request_ids,
    "references": jobs.references,
    "symlink_race": jobs.symlink_race,
    "cross_client": jobs.cross_client,
    "listing_tokens": jobs.listing_tokens,
    "unread_answers": streams.unread_answers,
    "idle_streams": streams.idle_streams,
    "health_flood": streams.health_flood,
    "web_framing": web.web_framing,
    "web_slowloris": web.web_slowloris,
    "web_uploads": web.web_uploads,
    "web_identity": web.web_identity,
}
