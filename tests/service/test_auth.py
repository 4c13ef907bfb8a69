"""Bearer tokens (UNAUTHENTICATED / PERMISSION_DENIED), TLS and mutual TLS, over real channels."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dermserve.core.tls import channel_credentials
from dermserve.service.auth import FileWatch, TokenTable
from dermserve.service.settings import SecuritySettings
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from tests.pki import Pki, make_pki
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


def test_delegation_options_parse_and_unknown_ones_are_refused() -> None:
    table = TokenTable.parse("a delegate=users\nb delegate=operators name=web\nc\n")
    assert [g.delegate for g in table.grants] == ["users", "operators", ""]
    for line in ("a delegate=everyone", "a delegate=", "a delegates=users"):
        with pytest.raises(ValueError):
            TokenTable.parse(line)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_channel(port: int, pki: Pki, with_client_cert: bool) -> grpc.Channel:
    credentials = channel_credentials(pki.ca, pki.client_cert if with_client_cert else None,
                                      pki.client_key if with_client_cert else None)
    # A private subchannel pool: each channel makes its own connection (and TLS handshake), so a
    # test sees the certificate the server offers now, not a connection another channel made.
    return grpc.secure_channel(f"localhost:{port}", credentials,
                               options=[("grpc.use_local_subchannel_pool", 1)])


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


# --- rotation without a restart ----------------------------------------------------------------
def replace_file(path: Path, text: str) -> None:
    """Write a new file and rename it over the old one (a new inode), as editors and tools do."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def test_a_rotated_tokens_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-tok\n")
    security = SecuritySettings(auth_tokens_file=tokens, reload_interval_s=0.0)
    with running_server(FakeBackend(), server_settings(security=security)) as running:
        assert classify(running, "old-tok").top_label
        replace_file(tokens, "new-tok dermserve.v1.LesionClassifier\n")
        assert classify(running, "new-tok").top_label
        with pytest.raises(grpc.RpcError) as caught:
            classify(running, "old-tok")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(caught.value) == "INVALID_TOKEN"
        # A file caught empty (or half-written) is refused: the last good grants stay in force.
        replace_file(tokens, "# nothing yet\n")
        assert classify(running, "new-tok").top_label


def test_file_watch_looks_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("a\n")
    now = [0.0]
    watch = FileWatch([path], interval_s=10.0, clock=lambda: now[0])
    replace_file(path, "b\n")
    assert watch.poll(path.read_text) is None  # changed, but the interval has not passed
    now[0] = 10.0
    assert watch.poll(path.read_text) == "b\n"
    now[0] = 20.0
    assert watch.poll(path.read_text) is None  # unchanged since the last load


def kubernetes_secret_dir(mount: Path, contents: Path) -> None:
    """Point `mount`'s files at `contents` the way the kubelet updates a Secret volume: the files
    are links through `..data`, and `..data` is swapped atomically to a new directory."""
    mount.mkdir(exist_ok=True)
    link = mount / "..data"
    staged = mount / "..data_new"
    staged.symlink_to(contents)
    os.replace(staged, link)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(Path("..data") / name)


def secret_contents(directory: Path, cert: Path, key: Path, ca: Path) -> Path:
    directory.mkdir()
    for name, source in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)):
        shutil.copy(source, directory / name)
    return directory


def classify_over(channel: grpc.Channel) -> pb.ClassifyResponse:
    response: pb.ClassifyResponse = pb_grpc.LesionClassifierStub(channel).Classify(
        pb.ClassifyRequest(image=good_jpeg()), timeout=5)
    return response


def test_rotated_certificate_key_and_client_ca_serve_new_connections(pki: Pki,
                                                                      tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    before = secret_contents(tmp_path / "before", pki.server_cert, pki.server_key, pki.ca)
    after = secret_contents(tmp_path / "after", other.server_cert, other.server_key, other.ca)
    broken = secret_contents(tmp_path / "broken", pki.server_cert, other.server_key, other.ca)
    mount = tmp_path / "mount"
    kubernetes_secret_dir(mount, before)
    security = SecuritySettings(tls_cert=mount / "tls.crt", tls_key=mount / "tls.key",
                                tls_client_ca=mount / "ca.crt", reload_interval_s=0.0)
    with running_server(FakeBackend(), server_settings(security=security)) as running:
        with tls_channel(running.port, pki, with_client_cert=True) as channel:
            assert classify_over(channel).model.version == 2
        # A key that does not match its certificate is refused; the old pair stays in force.
        kubernetes_secret_dir(mount, broken)
        with tls_channel(running.port, pki, with_client_cert=True) as channel:
            assert classify_over(channel).model.version == 2
        kubernetes_secret_dir(mount, after)
        with tls_channel(running.port, other, with_client_cert=True) as channel:
            assert classify_over(channel).model.version == 2
        for old_side in (pki,  # trusts only the old CA and presents the old client certificate
                         Pki(other.ca, other.server_cert, other.server_key, pki.client_cert,
                             pki.client_key)):  # trusts the new CA, old client certificate
            with tls_channel(running.port, old_side, with_client_cert=True) as channel:
                with pytest.raises(grpc.RpcError) as caught:
                    classify_over(channel)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
