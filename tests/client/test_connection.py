"""The connection every client shares (dermserve/client/connection.py), against the real front
with bearer tokens on: the settings come from flags over DERMSERVE_* variables, the token travels
as call metadata, and a failed call becomes one {code, reason, message} entry."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dermserve.client.connection import (
    DEFAULT_CLIENT_TIMEOUT_S,
    add_connection_arguments,
    call_metadata,
    error_entry,
    open_channel,
)
from dermserve.protocol.wire import DEFAULT_ADDRESS
from dermserve.service.settings import SecuritySettings
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from tests.service.conftest import FakeBackend, Running, good_jpeg, running_server, server_settings

TOKEN = "client-test-token"


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser, environ or {})
    return parser.parse_args(argv)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Running]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    settings = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    with running_server(FakeBackend(), settings) as running:
        yield running


def classify(settings: argparse.Namespace, image: bytes) -> pb.ClassifyResponse:
    with open_channel(settings) as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        response: pb.ClassifyResponse = stub.Classify(
            pb.ClassifyRequest(image=image), metadata=call_metadata(settings),
            timeout=settings.timeout)
        return response


def test_defaults_then_variables_then_flags() -> None:
    plain = parse([])
    assert (plain.target, plain.token, plain.tls, plain.timeout) == (
        DEFAULT_ADDRESS, None, False, DEFAULT_CLIENT_TIMEOUT_S)
    environ = {"DERMSERVE_TARGET": "front.example:50051", "DERMSERVE_TOKEN": "from-env"}
    assert (parse([], environ).target, parse([], environ).token) == ("front.example:50051",
                                                                      "from-env")
    assert parse(["--target", "127.0.0.1:1"], environ).target == "127.0.0.1:1"
    assert call_metadata(plain) is None
    assert call_metadata(parse([], environ)) == (("authorization", "Bearer from-env"),)


def test_the_token_reaches_the_front(token_server: Running) -> None:
    settings = parse(["--target", f"127.0.0.1:{token_server.port}", "--timeout", "10"],
                     {"DERMSERVE_TOKEN": TOKEN})
    assert classify(settings, good_jpeg()).probabilities


@pytest.mark.parametrize("token, image, entry", [
    (None, good_jpeg(), {"code": "UNAUTHENTICATED", "reason": "MISSING_TOKEN"}),
    ("wrong", good_jpeg(), {"code": "UNAUTHENTICATED", "reason": "INVALID_TOKEN"}),
    (TOKEN, b"not an image", {"code": "INVALID_ARGUMENT", "reason": "UNSUPPORTED_FORMAT"}),
])
def test_a_failed_call_is_one_entry(token_server: Running, token: str | None, image: bytes,
                                    entry: dict[str, str]) -> None:
    settings = parse(["--target", f"127.0.0.1:{token_server.port}", "--timeout", "10"],
                     {"DERMSERVE_TOKEN": token} if token else {})
    with pytest.raises(grpc.RpcError) as raised:
        classify(settings, image)
    found = error_entry(raised.value)
    assert {key: found[key] for key in entry} == entry
    assert found["message"]
