"""Bearer tokens (UNAUTHENTICATED / PERMISSION_DENIED), TLS and mutual TLS, over real channels."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from service.auth import TokenTable, channel_credentials
from service.settings import SecuritySettings
from tests.service.conftest import (
    FakeBackend,
    Running,
    good_jpeg,
    pb,
    reason_of,
    running_server,
    server_settings,
)

TOKENS = """
# token        services it may call (none listed: all)
classify-tok   dermserve.v1.LesionClassifier
batch-tok      dermserve.v1.BatchJobs
admin-tok
"""


def classify(running: Running, token: str | None) -> pb.ClassifyResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    response: pb.ClassifyResponse = running.stub.Classify(
        pb.ClassifyRequest(image=good_jpeg()), metadata=metadata, timeout=5)
    return response


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Running]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    settings = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    with running_server(FakeBackend(), settings) as running:
        yield running


@pytest.mark.parametrize("token, code, reason", [
    (None, grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"),
    ("wrong", grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"),
    ("batch-tok", grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_GRANTED"),
])
def test_refused_tokens(token_server: Running, token: str | None, code: grpc.StatusCode,
                        reason: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        classify(token_server, token)
    assert caught.value.code() == code
    assert reason_of(caught.value) == reason


@pytest.mark.parametrize("token", ["classify-tok", "admin-tok"])
def test_accepted_tokens(token_server: Running, token: str) -> None:
    assert classify(token_server, token).model.version == 2


def test_streams_are_guarded_too(token_server: Running) -> None:
    request = pb.ClassifyStreamRequest(request=pb.ClassifyRequest(image=good_jpeg()))
    with pytest.raises(grpc.RpcError) as caught:
        list(token_server.stub.ClassifyStream(iter([request]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(token_server.stub.ClassifyStream(
        iter([request]), metadata=(("authorization", "Bearer admin-tok"),), timeout=5))
    assert answers[0].WhichOneof("outcome") == "result"


def test_health_needs_no_token(token_server: Running) -> None:
    stub = health_pb2_grpc.HealthStub(token_server.channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # raises if refused


def test_refusals_are_counted(token_server: Running) -> None:
    with pytest.raises(grpc.RpcError):
        classify(token_server, None)
    assert token_server.metrics.registry.get_sample_value(
        "dermserve_requests_total", {"method": "Classify", "code": "UNAUTHENTICATED"}) == 1.0


def test_auth_off_by_default(fake_server: Running) -> None:
    assert classify(fake_server, None).top_label
    assert classify(fake_server, "anything").top_label


def test_token_table_parsing() -> None:
    table = TokenTable.parse(TOKENS)
    assert [g.token for g in table.grants] == ["classify-tok", "batch-tok", "admin-tok"]
    with pytest.raises(ValueError):
        TokenTable.parse("# only a comment\n")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def issue(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> None:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "2",
            "-subj", "/CN=dermserve test CA")
    issue(d, "server", d / "ca.crt", d / "ca.key",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(d, "client", d / "ca.crt", d / "ca.key", "extendedKeyUsage=clientAuth\n")
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key")


def tls_channel(port: int, pki: Pki, with_client_cert: bool) -> grpc.Channel:
    credentials = channel_credentials(pki.ca, pki.client_cert if with_client_cert else None,
                                      pki.client_key if with_client_cert else None)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_with_token(pki: Pki) -> None:
    security = SecuritySettings(auth_token="s3cret", tls_cert=pki.server_cert,
                                tls_key=pki.server_key)
    with running_server(FakeBackend(), server_settings(security=security)) as running:
        with tls_channel(running.port, pki, with_client_cert=False) as channel:
            secure = pb_grpc.LesionClassifierStub(channel)
            response = secure.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=5,
                                       metadata=(("authorization", "Bearer s3cret"),))
            assert response.model.version == 2
        with pytest.raises(grpc.RpcError) as caught:  # plaintext to a TLS port
            running.stub.Classify(pb.ClassifyRequest(image=good_jpeg()), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pki: Pki) -> None:
    security = SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                tls_client_ca=pki.ca)
    with running_server(FakeBackend(), server_settings(security=security)) as running:
        with tls_channel(running.port, pki, with_client_cert=True) as channel:
            response = pb_grpc.LesionClassifierStub(channel).Classify(
                pb.ClassifyRequest(image=good_jpeg()), timeout=5)
            assert response.model.version == 2
        with tls_channel(running.port, pki, with_client_cert=False) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.LesionClassifierStub(channel).Classify(
                    pb.ClassifyRequest(image=good_jpeg()), timeout=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_beside_a_tls_port(pki: Pki) -> None:
    """Kubelet probes cannot speak TLS: --health-listen serves grpc.health.v1 only, in plaintext,
    with the same statuses as the TLS port."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.service.conftest import wait_until

    security = SecuritySettings(auth_token="s3cret", tls_cert=pki.server_cert,
                                tls_key=pki.server_key)
    settings = server_settings(security=security, health_listen_address="127.0.0.1:0")
    backend = FakeBackend()
    with running_server(backend, settings) as running:
        assert running.server.health_port > 0
        with grpc.insecure_channel(f"127.0.0.1:{running.server.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                return int(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)

            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
            backend.up = False
            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.LesionClassifierStub(channel).Classify(
                    pb.ClassifyRequest(image=good_jpeg()), timeout=2)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
