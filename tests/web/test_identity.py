"""Per-user identity on the page, against the real front with a tokens file, BatchJobs on a real
redis-server and an in-process worker: the page believes the authenticating proxy's headers only
from the trusted addresses (here the test itself, on loopback, plays the proxy), forwards the
user to the front with its delegating token, and the front decides ownership: a clinician sees,
follows and downloads only their own jobs, an operator all of them; no user, no API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Browser, expect

from dermserve.service.settings import SecuritySettings
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.web.server import check
from dermserve.web.settings import WebSettings
from dermserve.worker.settings import WorkerSettings
from devtools.attack.rawhttp import connect, read_all, request
from tests.service.conftest import reason_of, server_settings
from tests.web.conftest import WAIT_MS, Web, running_web
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images
from tests.worker.test_front import batch_services

TOKENS = """
page-tok        delegate=operators name=web
users-only-tok  delegate=users name=web2
plain-tok       name=cli
"""
OPERATORS = "derm-operators"
IMAGES = 3


@dataclass
class Hospital:
    web: Web
    jobs: dict[str, str]  # user -> the id of the job submitted on their behalf


def on_behalf(user: str, token: str = "page-tok", role: str | None = None
              ) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), ("dermserve-on-behalf-of", user),
            *((("dermserve-on-behalf-role", role),) if role else ()))


def submit(front_port: int, metadata: tuple[tuple[str, str], ...], folder: str,
           client_job_id: str = "") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{front_port}") as channel:
        answer = pb_grpc.BatchJobsStub(channel).SubmitBatchJob(pb.SubmitBatchJobRequest(
            files=pb.FileReferences(paths=[folder]), client_job_id=client_job_id),
            metadata=metadata, timeout=10)
    return str(answer.job.job_id)


@contextmanager
def hospital(worker: WorkerSettings, root: Path, tmp_path: Path, token: str = "page-tok",
             **changes: object) -> Iterator[Hospital]:
    """The page behind a proxy on loopback, alice's and bob's jobs submitted and run."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    front = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    backend = FakeBackend()
    web_changes: dict[str, object] = {"token": token, "trusted_proxies": ("127.0.0.0/8",),
                                      "operator_group": OPERATORS, **changes}
    with running_web(backend, batch_services(worker), front_settings=front,
                     **web_changes) as web:
        ids = {}
        for user in ("alice", "bob"):
            write_images(root / f"MRN-{user}", IMAGES)
            ids[user] = submit(web.front_port, on_behalf(user), f"MRN-{user}")
        run_worker_burst(worker, backend)
        yield Hospital(web, ids)


def call(web: Web, path: str, user: str | None, groups: str = "",
         method: str = "GET") -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or raw bytes, headers) of `path` as `user` (through the 'proxy')."""
    headers = {"X-Dermserve-Page": "1"}
    if user is not None:
        headers |= {"X-Forwarded-User": user, "X-Forwarded-Groups": groups}
    req = urllib.request.Request(web.url + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            status, body, got = answer.status, answer.read(), lower(answer.headers.items())
    except urllib.error.HTTPError as refused:
        status, body, got = refused.code, refused.read(), lower(refused.headers.items())
    try:
        return status, json.loads(body), got
    except ValueError:
        return status, body, got


def lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def listed(web: Web, user: str, groups: str = "") -> set[str]:
    status, body, _ = call(web, "/api/jobs", user, groups)
    assert status == 200, body
    return {job["job_id"] for job in body["jobs"]}


def test_a_clinician_sees_follows_and_downloads_only_their_own_jobs(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path) as site:
        alice, bob = site.jobs["alice"], site.jobs["bob"]
        assert listed(site.web, "alice") == {alice}
        assert listed(site.web, "bob") == {bob}
        status, job, headers = call(site.web, f"/api/jobs/{alice}", "alice")
        assert status == 200 and job["state"] == "BATCH_JOB_STATE_SUCCEEDED"
        assert headers["cache-control"] == "no-store"
        assert not [field for field in job if field.endswith("_path")]  # no server paths
        status, results, headers = call(site.web, f"/api/jobs/{alice}/results", "alice")
        assert status == 200 and len(results.splitlines()) == IMAGES
        assert headers["cache-control"] == "no-store"
        for path in (f"/api/jobs/{bob}", f"/api/jobs/{bob}/results"):
            status, body, _ = call(site.web, path, "alice")
            assert status == 404 and body["error"]["reason"] == "JOB_NOT_FOUND"
            assert b"MRN-bob" not in json.dumps(body).encode()


def test_an_operator_sees_every_job(settings: WorkerSettings, input_root: Path,
                                    tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path) as site:
        everyone = set(site.jobs.values())
        assert listed(site.web, "carol", f"nurses, {OPERATORS}") >= everyone
        assert listed(site.web, "carol", "nurses") == set()  # not an operator: nobody's jobs
        status, _, _ = call(site.web, f"/api/jobs/{site.jobs['bob']}/results", "carol",
                            OPERATORS)
        assert status == 200


def test_an_operator_role_needs_a_token_that_may_delegate_operators(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path, token="users-only-tok") as site:
        assert listed(site.web, "alice") == {site.jobs["alice"]}
        status, body, _ = call(site.web, "/api/jobs", "carol", OPERATORS)
        assert status == 502 and body["error"]["reason"] == "ROLE_NOT_DELEGATED"


def test_without_a_user_the_api_answers_401_and_the_page_still_loads(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path) as site:
        for path, method in (("/api/jobs", "GET"), (f"/api/jobs/{site.jobs['bob']}", "GET"),
                             (f"/api/jobs/{site.jobs['bob']}/results", "GET"),
                             ("/api/analyze", "POST")):
            status, body, _ = call(site.web, path, None, method=method)
            assert status == 401 and body["error"]["reason"] == "SIGN_IN_REQUIRED", path
        status, body, _ = call(site.web, "/api/jobs", "alice\x7f")
        assert status == 401 and body["error"]["reason"] == "INVALID_IDENTITY"
        assert call(site.web, "/jobs", None)[0] == 200
        assert call(site.web, "/healthz", None)[0] == 200


def test_identity_headers_from_an_untrusted_address_are_ignored(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path, trusted_proxies=("10.0.0.0/8",)) as site:
        status, body, _ = call(site.web, "/api/jobs", "alice")
        assert status == 401 and body["error"]["reason"] == "SIGN_IN_REQUIRED"


def test_by_default_the_headers_are_ignored_and_the_page_is_one_local_user(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    """No trusted proxy: a forged X-Forwarded-User changes nothing; the page acts as its own
    (non-delegating) token, whose jobs it lists."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    front = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    write_images(input_root / "local", 1)
    with running_web(FakeBackend(), batch_services(settings), front_settings=front,
                     token="plain-tok") as web:
        mine = submit(web.front_port, (("authorization", "Bearer plain-tok"),), "local")
        submit(web.front_port, on_behalf("alice"), "local")
        assert listed(web, "alice") == {mine}
        assert call(web, "/api/jobs", None)[1]["jobs"][0]["job_id"] == mine


@pytest.mark.parametrize(("token", "user", "role", "reason"), [
    ("plain-tok", "alice", None, "DELEGATION_NOT_GRANTED"),
    ("users-only-tok", "alice", "operator", "ROLE_NOT_DELEGATED"),
    ("page-tok", "alice", "admin", "ROLE_NOT_DELEGATED"),
    ("page-tok", "a b", None, "INVALID_DELEGATED_USER"),
    ("page-tok", "x" * 257, None, "INVALID_DELEGATED_USER"),
])
def test_the_front_refuses_delegation_a_token_was_not_granted(
        settings: WorkerSettings, input_root: Path, tmp_path: Path, token: str,
        user: str, role: str | None, reason: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    front = server_settings(security=SecuritySettings(auth_tokens_file=tokens))
    write_images(input_root / "x", 1)
    with running_web(FakeBackend(), batch_services(settings), front_settings=front) as web:
        with pytest.raises(grpc.RpcError) as refused:
            submit(web.front_port, on_behalf(user, token, role), "x")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(refused.value) == reason


def test_head_of_a_results_download_sends_no_body(
        settings: WorkerSettings, input_root: Path, tmp_path: Path) -> None:
    with hospital(settings, input_root, tmp_path) as site:
        with connect(int(site.web.url.rsplit(":", 1)[1])) as sock:
            sock.sendall(request("HEAD", f"/api/jobs/{site.jobs['alice']}/results",
                                 {"X-Forwarded-User": "alice"}))
            raw = read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"cache-control: no-store" in head.lower()
    assert body == b""


def test_trusted_proxies_need_a_token_to_delegate_with() -> None:
    with pytest.raises(SystemExit, match="needs --token"):
        check(WebSettings(trusted_proxies=("10.0.0.0/8",)))


def test_the_page_behind_the_proxy_lists_the_users_jobs_and_keeps_no_ids_in_local_storage(
        browser: Browser, settings: WorkerSettings, input_root: Path,
        tmp_path: Path) -> None:
    """Chromium with the proxy's header on every request (as oauth2-proxy adds it): alice's
    table lists her job, not bob's; a followed id lives in this tab's sessionStorage only, and
    an id an earlier version left in localStorage is dropped."""
    with hospital(settings, input_root, tmp_path) as site:
        context = browser.new_context(extra_http_headers={"X-Forwarded-User": "alice"})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(site.web.url + "/jobs")
        page.evaluate("localStorage.setItem('dermserve.jobs', '[\"MRN4711_Doe_Jane\"]')")
        page.reload()
        rows = page.locator("#my-jobs tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text(site.jobs["alice"])
        page.get_by_label("Job id").fill(site.jobs["alice"])
        page.get_by_role("button", name="Follow job").click()
        expect(page.locator("#jobs tbody tr")).to_contain_text("succeeded")
        assert page.evaluate("localStorage.length") == 0
        assert site.jobs["alice"] in page.evaluate("sessionStorage.getItem('dermserve.jobs')")
        context.close()
