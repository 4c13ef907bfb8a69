"""The page's HTTP server against hostile clients, over raw sockets (devtools/attack/rawhttp.py)
and the real front: framing (an unread body is no second request, Content-Length with
Transfer-Encoding refused), strict numbers, long ids, the Host allow-list, CSRF, heads held
open, uploads held or cut short, the bound on uploads in flight, and the security headers and
no-store on every answer, the server's own errors included."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dermserve.web.front import FrontClient
from dermserve.web.guards import SECURITY_HEADERS
from dermserve.web.identity import WebUser
from dermserve.web.settings import WebSettings
from devtools.attack.rawhttp import Answer, connect, exchange, parse, read_all, request
from tests.service.conftest import FakeBackend, good_jpeg
from tests.web.conftest import Web, running_web
from tests.worker.conftest import wait_until

PAGE = {"X-Dermserve-Page": "1"}
CSP = "content-security-policy"


@pytest.fixture
def web() -> Iterator[Web]:
    with running_web(FakeBackend(), header_timeout_s=0.5, body_idle_timeout_s=0.5) as running:
        yield running


def port_of(web: Web) -> int:
    return int(web.url.rsplit(":", 1)[1])


def one(web: Web, data: bytes) -> Answer:
    (answer,) = exchange(port_of(web), data)
    return answer


def assert_guarded(answer: Answer) -> None:
    """The security headers and no-store, on whatever answer this is."""
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name.lower()) == value, name
    assert answer.headers.get("cache-control") == "no-store"


def test_an_unread_body_is_skipped_never_read_as_a_second_request(web: Web) -> None:
    smuggled = request("GET", "/api/jobs", close=False)
    answers = exchange(port_of(web), request("GET", "/healthz", body=smuggled, close=False)
                       + request("POST", "/nowhere", PAGE, body=smuggled, close=False)
                       + request("GET", "/healthz"))
    assert [a.status for a in answers] == [200, 404]  # the 404 had a body: it closes
    assert answers[1].headers["connection"] == "close"


def test_content_length_with_transfer_encoding_is_refused_and_closed(web: Web) -> None:
    image = good_jpeg()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(image), image)
    answer = one(web, request("POST", "/api/analyze", {
        **PAGE, "Content-Length": "5", "Transfer-Encoding": "chunked"}, body=chunked))
    assert answer.status == 400 and b"AMBIGUOUS_FRAMING" in answer.body
    assert answer.headers["connection"] == "close"
    assert_guarded(answer)


@pytest.mark.parametrize("length", ["\u00b2", "1" * 21, "-1", "1,2"])
def test_a_content_length_that_is_not_ascii_digits_gets_400_with_the_headers(
        web: Web, length: str) -> None:
    # Latin-1 on the wire: '²' is the one byte 0xB2, which str.isdigit() took for a digit.
    answer = one(web, request("POST", "/api/analyze", {**PAGE, "Content-Length": length}))
    assert answer.status == 400 and b"MALFORMED_REQUEST" in answer.body
    assert_guarded(answer)


@pytest.mark.parametrize("version", ["%C2%B2", "1" * 20, "%D9%A3", "-1", "2x"])
def test_a_version_that_is_not_a_small_ascii_number_gets_400(web: Web, version: str) -> None:
    answer = one(web, request("GET", f"/api/model?version={version}"))
    assert answer.status == 400 and b"INVALID_VERSION" in answer.body
    assert_guarded(answer)


def test_a_valid_version_still_answers(web: Web) -> None:
    assert one(web, request("GET", "/api/model?version=2")).status == 200


@pytest.mark.parametrize(("length", "status"), [(129, 400), (10_000, 400), (60_000, 431)])
def test_a_long_job_id_is_refused_before_it_is_forwarded_or_logged(
        web: Web, length: int, status: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        answer = one(web, request("GET", "/api/jobs/" + "j" * length))
    assert answer.status == status
    assert_guarded(answer)
    assert len(answer.body) < 1000 and max(len(r.getMessage()) for r in caplog.records) < 500


def test_a_host_not_allowed_gets_421_and_the_probes_answer_any(web: Web) -> None:
    answer = one(web, request("GET", "/api/config", {"Host": "rebound.attacker.example"}))
    assert answer.status == 421 and b"HOST_NOT_ALLOWED" in answer.body
    assert one(web, request("GET", "/healthz", {"Host": "10.1.2.3:8080"})).status == 200
    assert one(web, request("GET", "/api/config", {"Host": "localhost:8080"})).status == 200


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},  # a cross-site form's POST
    {**PAGE, "Origin": "https://attacker.example"},
    {**PAGE, "Origin": "null"},
    {**PAGE, "Sec-Fetch-Site": "cross-site"},
])
def test_a_cross_site_post_is_refused_before_it_is_read(web: Web,
                                                        headers: dict[str, str]) -> None:
    answer = one(web, request("POST", "/api/analyze", headers, body=good_jpeg()))
    assert answer.status == 403 and b"CROSS_SITE_REQUEST" in answer.body
    assert_guarded(answer)


def test_the_pages_own_post_is_accepted(web: Web) -> None:
    answer = one(web, request("POST", "/api/analyze", {
        **PAGE, "Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}, body=good_jpeg()))
    assert answer.status == 200 and b"probabilities" in answer.body
    assert_guarded(answer)


def test_a_request_head_over_the_limit_gets_431(web: Web) -> None:
    answer = one(web, request("GET", "/", {"X-Big": "a" * 20_000}))
    assert answer.status == 431 and b"HEADERS_TOO_LARGE" in answer.body
    assert_guarded(answer)


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /\x1b[31mred HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
])
def test_malformed_requests_get_400_with_the_headers_and_no_raw_escape_in_the_log(
        web: Web, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = one(web, data)
    assert answer.status == 400
    assert_guarded(answer)
    assert "\x1b" not in caplog.text


def test_an_escape_in_a_path_is_logged_escaped(web: Web,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert one(web, request("GET", "/%1b[31m%0aFAKE%20200")).status == 404
    assert "GET /%1B%5B31m%0AFAKE%20200 404" in caplog.text
    assert "\x1b" not in caplog.text and "\nFAKE" not in caplog.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/no-such-page", 404), ("PUT", "/api/analyze", 405), ("GET", "/api/analyze", 405),
    ("DELETE", "/api/jobs/x", 405), ("POST", "/api/analyze", 411)])
def test_error_pages_carry_the_security_headers(web: Web, method: str, path: str,
                                                status: int) -> None:
    answer = one(web, request(method, path, PAGE))
    assert answer.status == status
    assert_guarded(answer)


class CountingFront(FrontClient):
    """A FrontClient that counts the images it forwards to the front."""

    def __init__(self, settings: WebSettings) -> None:
        super().__init__(settings)
        self.forwarded: list[int] = []

    def analyze(self, image: bytes, user: WebUser | None = None,
                context: Any = None) -> dict[str, Any]:
        self.forwarded.append(len(image))
        return super().analyze(image, user, context)


class BrokenFront(FrontClient):
    """A FrontClient with a bug: its health check raises."""

    def serving(self) -> bool:
        raise RuntimeError("a bug in the page")


def test_an_internal_error_is_a_generic_500_with_the_headers() -> None:
    with running_web(FakeBackend(), client_class=BrokenFront) as web:
        answer = one(web, request("GET", "/readyz"))
    assert answer.status == 500 and b"a bug" not in answer.body and b"Traceback" not in answer.body
    assert_guarded(answer)


def test_uvicorns_own_503_over_the_connection_limit_carries_the_headers() -> None:
    with running_web(FakeBackend(), max_connections=2) as web, connect(port_of(web)) as held:
        held.sendall(request("GET", "/healthz", close=False))
        assert held.recv(65536).startswith(b"HTTP/1.1 200")  # accepted, open, counted
        answer = one(web, request("GET", "/healthz"))
    assert answer.status == 503
    assert_guarded(answer)


def test_head_of_a_page_sends_the_headers_and_no_body(web: Web) -> None:
    with connect(port_of(web)) as sock:
        sock.sendall(request("HEAD", "/"))
        raw = read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-security-policy" in head.lower()
    assert body == b""


def test_a_head_held_open_is_closed_after_the_header_timeout(web: Web) -> None:
    """A slowloris: heads never finished, one byte at a time; the server closes each after
    header_timeout_s (0.5 s here) however often a byte comes."""
    sockets = [connect(port_of(web)) for _ in range(20)]
    try:
        for sock in sockets:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for sock in sockets:
            assert read_all(sock) == b""  # closed without an answer (read_all waits for it)
    finally:
        for sock in sockets:
            sock.close()
    assert one(web, request("GET", "/healthz")).status == 200


def held_upload(web: Web, image: bytes, sent: int) -> socket.socket:
    """An upload of `image` that sends only its first `sent` bytes and then holds."""
    sock = connect(port_of(web))
    sock.sendall(request("POST", "/api/analyze", PAGE, body=image)[:-len(image) + sent])
    return sock


def forwarded(web: Web) -> list[int]:
    client = web.server.client
    assert isinstance(client, CountingFront)
    return client.forwarded


def test_an_upload_held_one_byte_short_gets_408_and_is_never_forwarded() -> None:
    with running_web(FakeBackend(), client_class=CountingFront, body_idle_timeout_s=0.5) as web:
        image = good_jpeg()
        with held_upload(web, image, len(image) - 1) as sock:
            (answer,) = parse(read_all(sock))
        assert answer.status == 408 and b"UPLOAD_TIMEOUT" in answer.body
        assert_guarded(answer)
        assert forwarded(web) == []


def test_an_upload_cut_short_is_dropped_not_forwarded() -> None:
    with running_web(FakeBackend(), client_class=CountingFront) as web:
        image = good_jpeg()
        with held_upload(web, image, len(image) // 2):
            wait_until(lambda: web.server.page.uploads == 1, "the upload to be read")
        wait_until(lambda: web.server.page.uploads == 0, "the cut upload to be dropped")
        assert forwarded(web) == []
        assert one(web, request("POST", "/api/analyze", PAGE, body=image)).status == 200
        assert forwarded(web) == [len(image)]  # a complete upload is forwarded whole


def test_uploads_past_the_bound_wait_then_get_503_with_retry_after() -> None:
    with running_web(FakeBackend(), max_concurrent_uploads=1, upload_wait_s=0.2) as web:
        image = good_jpeg()
        with held_upload(web, image, 10):
            wait_until(lambda: web.server.page.uploads == 1, "the held upload to be read")
            answer = one(web, request("POST", "/api/analyze", PAGE, body=image))
            assert answer.status == 503 and answer.headers["retry-after"] == "2"
            assert b"TOO_MANY_UPLOADS" in answer.body
            assert_guarded(answer)
        wait_until(lambda: web.server.page.uploads == 0, "the held upload to be dropped")
        assert one(web, request("POST", "/api/analyze", PAGE, body=image)).status == 200


def test_an_upload_over_the_limit_is_refused_while_it_is_read() -> None:
    """A Content-Length far over the limit is refused before a byte of the body is read."""
    with running_web(FakeBackend(), max_image_bytes=1000) as web:
        with connect(port_of(web)) as sock:
            sock.sendall(request("POST", "/api/analyze", {**PAGE, "Content-Length": str(10**9)}))
            (answer,) = parse(read_all(sock))
    assert answer.status == 413 and b"IMAGE_TOO_LARGE" in answer.body
    assert answer.headers["connection"] == "close"
    assert_guarded(answer)
