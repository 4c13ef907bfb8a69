"""Web page families: the clinicians' page (dermserve-web) behind the authenticating proxy
stand-in (devtools/attack/proxy.py), attacked over raw sockets (devtools/attack/rawhttp.py).

- `web_framing`: smuggling in unread bodies, Content-Length with Transfer-Encoding, numbers
  that are not ASCII digits, oversized ids and heads, a Host not allowed, cross-site POSTs;
- `web_slowloris`: request heads held open, one byte short (each must be closed by the page's
  header timeout, while the page keeps answering);
- `web_uploads`: uploads over the limit, held one byte short, cut short, and a crowd of large
  ones at once (each refused or answered; none half-sent reaches the front);
- `web_identity`: alice and bob, each signed in at their own proxy, and an operator: nobody
  reads a job that is not theirs, forged identity headers change nothing, and without the proxy
  the API is closed.

An answer is recorded as `HTTP:<status>` (a 500 as `HTTP:INTERNAL`, which fails the run like a
gRPC INTERNAL); a connection closed without an answer as `HTTP:CLOSED`. Attacks on the page's
own parsing come straight from the proxy's address with an identity header (as through a proxy
that streams everything through); attacks on identity go through the proxy, or around it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

from dermserve.v1 import batch_jobs_pb2 as jobs_pb
from dermserve.v1 import batch_jobs_pb2_grpc as jobs_grpc
from devtools.attack import corpus
from devtools.attack.calls import CALL_TIMEOUT_S, bearer, finish_job, wait_for
from devtools.attack.proxy import PROXY_ADDRESS, USER_HEADER, AuthProxy
from devtools.attack.rawhttp import Answer, connect, exchange, parse, read_all, request
from devtools.attack.record import Record
from devtools.attack.stack import WEB_OPERATOR_GROUP, WEB_TOKEN, Stack

PAGE = {"X-Dermserve-Page": "1"}
AS_MALLORY = {**PAGE, USER_HEADER: "mallory"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the page's default upload limit, which the stack keeps
PAGE_P99_LIMIT_S = 1.0


def outcome(answers: list[Answer]) -> str:
    if not answers:
        return "HTTP:CLOSED"
    return "HTTP:INTERNAL" if answers[0].status >= 500 and answers[0].status not in (
        502, 503, 504) else f"HTTP:{answers[0].status}"


def attempt(record: Record, family: str, name: str, call: Callable[[], list[Answer]]
            ) -> list[Answer]:
    """One attempt's answers, recorded by the first one's status (with its reason)."""
    try:
        answers = call()
    except OSError as error:
        record.add(family, name, "HTTP:CLOSED", type(error).__name__)
        return []
    record.add(family, name, outcome(answers), reason_in(answers))
    return answers


def reason_in(answers: list[Answer]) -> str:
    try:
        return str(json.loads(answers[0].body)["error"]["reason"])
    except (IndexError, ValueError, KeyError, TypeError):
        return ""


def direct(stack: Stack, data: bytes) -> Callable[[], list[Answer]]:
    """`data` sent to the page from the proxy's address: the page's own parsing."""
    return lambda: exchange(stack.web_port, data, source=PROXY_ADDRESS)


def statuses(answers: list[Answer]) -> list[int]:
    return [answer.status for answer in answers]


def web_framing(stack: Stack, record: Record, quick: bool) -> None:
    family = "web_framing"
    smuggled = request("GET", "/api/jobs", AS_MALLORY, close=False)
    answers = attempt(record, family, "unread-body", direct(stack, request(
        "GET", "/healthz", body=smuggled, close=False) + request("GET", "/healthz")))
    record.expect(family, statuses(answers) == [200, 200],
                  f"a body was read as a request: {statuses(answers)}")
    image = corpus.good_jpeg()
    refusals = {
        "cl-with-te": (request("POST", "/api/analyze", {
            **AS_MALLORY, "Content-Length": "4", "Transfer-Encoding": "chunked"},
            body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(image), image)), 400),
        "length-superscript-two": (request("POST", "/api/analyze", {
            **AS_MALLORY, "Content-Length": "\u00b2"}), 400),
        "length-21-digits": (request("POST", "/api/analyze", {
            **AS_MALLORY, "Content-Length": "9" * 21}), 400),
        "version-superscript-two": (request("GET", "/api/model?version=%C2%B2", AS_MALLORY), 400),
        "version-20-digits": (request("GET", "/api/model?version=" + "9" * 20, AS_MALLORY), 400),
        "job-id-1000": (request("GET", "/api/jobs/" + "j" * 1000, AS_MALLORY), 400),
        "job-id-60000": (request("GET", "/api/jobs/" + "j" * 60_000, AS_MALLORY), 431),
        "escape-in-path": (b"GET /\x1b[2J HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        "rebound-host": (request("GET", "/api/config", {**AS_MALLORY,
                                                        "Host": "rebind.attacker.example"}), 421),
        "cross-site-form": (request("POST", "/api/analyze", {
            USER_HEADER: "mallory", "Content-Type": "text/plain"}, body=image), 403),
        "foreign-origin": (request("POST", "/api/analyze", {
            **AS_MALLORY, "Origin": "https://attacker.example"}, body=image), 403),
    }
    for name, (data, status) in refusals.items():
        answers = attempt(record, family, name, direct(stack, data))
        record.expect(family, statuses(answers)[:1] == [status],
                      f"{name} answered {statuses(answers)}, not {status}")


def page_latencies(record: Record, family: str, proxy: AuthProxy, count: int) -> list[float]:
    """Seconds each of `count` GET /api/config through `proxy` took (an ordinary page call),
    each of which must be answered 200."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        answers = attempt(record, family, "page-call", lambda: exchange(
            proxy.port, request("GET", "/api/config")))
        took.append(time.monotonic() - started)
        record.expect(family, statuses(answers) == [200], f"a page call got {statuses(answers)}")
    return took


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@contextmanager
def signed_in(stack: Stack, user: str, groups: str = "") -> Iterator[AuthProxy]:
    proxy = AuthProxy(stack.web_port, user, groups)
    try:
        yield proxy
    finally:
        proxy.close()


def web_slowloris(stack: Stack, record: Record, quick: bool) -> None:
    family = "web_slowloris"
    sockets = []
    with ExitStack() as held, signed_in(stack, "alice") as proxy:
        for _ in range(50 if quick else 300):
            sock = held.enter_context(connect(stack.web_port))
            sock.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(sock)
        took = page_latencies(record, family, proxy, 10 if quick else 50)
        closed = sum(read_all(sock) == b"" for sock in sockets)  # waits for each close
        for _ in range(closed):
            record.add(family, "held-head", "HTTP:CLOSED")
    record.expect(family, closed == len(sockets),
                  f"{len(sockets) - closed} heads held open past the header timeout")
    record.measure(family, "page_p99_s", round(p99(took), 3))
    record.expect_fast(family, p99(took) < PAGE_P99_LIMIT_S,
                       f"page p99 {p99(took):.3f} s during the slowloris")


def explains(stack: Stack) -> float:
    """Explain calls the front has answered: only the page makes them (the probe classifies)."""
    return stack.metric("dermserve_requests_total", method="Explain")


def answers_on(sock: socket.socket) -> list[Answer]:
    return parse(read_all(sock))


def held_upload(stack: Stack, body: bytes, sent: int) -> socket.socket:
    sock = connect(stack.web_port, source=PROXY_ADDRESS)
    sock.sendall(request("POST", "/api/analyze", AS_MALLORY, body=body)[:-len(body) + sent])
    return sock


def web_uploads(stack: Stack, record: Record, quick: bool) -> None:
    family = "web_uploads"
    image = corpus.good_jpeg()
    before = explains(stack)
    count = 10 if quick else 40
    with ExitStack() as held:  # one byte short, all at once: each 408 (or 503 past the bound)
        sockets = [held.enter_context(held_upload(stack, image, len(image) - 1))
                   for _ in range(count)]
        for sock in sockets:
            answers = attempt(record, family, "held-one-byte-short",
                              partial(answers_on, sock))
            record.expect(family, statuses(answers) in ([408], [503]),
                          f"an upload held one byte short got {statuses(answers)}")
    for _ in range(count):  # cut short, then closed: dropped
        held_upload(stack, image, len(image) // 2).close()
    # One complete upload after them (the page's slots free once it has dropped them), answered:
    # the only one the front may have seen.
    whole = attempt(record, family, "complete-upload", direct(stack, request(
        "POST", "/api/analyze", AS_MALLORY, body=image)))
    record.expect(family, statuses(whole) == [200], f"a complete upload got {statuses(whole)}")
    record.expect(family, explains(stack) == before + 1, "a half-sent upload reached the front")
    answers = attempt(record, family, "declared-over-limit", direct(stack, request(
        "POST", "/api/analyze", {**AS_MALLORY, "Content-Length": str(10 ** 12)})))
    record.expect(family, statuses(answers) == [413], f"10^12 bytes declared: {statuses(answers)}")
    crowd(stack, record, family, 6 if quick else 30)
    record.expect(family, wait_for(lambda: front_answered(stack)), "the page stopped answering")


def crowd(stack: Stack, record: Record, family: str, count: int) -> None:
    """`count` uploads of the largest size accepted, at once: each answered (422: not an image)
    or refused 503 past the page's bound, never dropped."""
    junk = bytes(MAX_IMAGE_BYTES)
    data = request("POST", "/api/analyze", AS_MALLORY, body=junk)
    seen: list[list[Answer]] = []
    threads = [threading.Thread(target=lambda: seen.append(attempt(
        record, family, "crowd-10-mib", direct(stack, data)))) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S * 6)
    got = sorted({outcome(answers) for answers in seen})
    # 422: read and refused by the front (not an image); 503: past the page's bound, refused
    # unread (the client may see the close before the answer).
    record.expect(family, len(seen) == count and set(got) <= {
        "HTTP:422", "HTTP:503", "HTTP:CLOSED"}, f"a crowd of 10 MiB uploads got {got}")


def front_answered(stack: Stack) -> bool:
    return statuses(exchange(stack.web_port, request("GET", "/readyz"))) == [200]


def submit_for(stack: Stack, user: str, folder: str) -> str:
    """A job submitted on `user`'s behalf with the page's token, as the page would."""
    metadata = (*bearer(WEB_TOKEN), ("dermserve-on-behalf-of", user))
    with stack.channel() as channel:
        stub = jobs_grpc.BatchJobsStub(channel)
        job = stub.SubmitBatchJob(jobs_pb.SubmitBatchJobRequest(
            files=jobs_pb.FileReferences(paths=[folder])), metadata=metadata,
            timeout=CALL_TIMEOUT_S).job
        finish_job(stub, job.job_id, metadata)
    return str(job.job_id)


def listed(answers: list[Answer]) -> set[str]:
    if statuses(answers) != [200]:
        return set()
    return {job["job_id"] for job in json.loads(answers[0].body)["jobs"]}


def web_identity(stack: Stack, record: Record, quick: bool) -> None:
    family = "web_identity"
    folder = stack.input_root / "web-MRN4711"
    folder.mkdir(exist_ok=True)
    (folder / "a.jpg").write_bytes(corpus.good_jpeg())
    jobs = {user: submit_for(stack, user, folder.name) for user in ("alice", "bob")}
    with signed_in(stack, "alice") as alice, signed_in(
            stack, "olga", f"staff,{WEB_OPERATOR_GROUP}") as operator:
        mine = attempt(record, family, "own-list", lambda: exchange(
            alice.port, request("GET", "/api/jobs")))
        record.expect(family, listed(mine) == {jobs["alice"]},
                      f"alice's list showed {sorted(listed(mine))}")
        theirs = [f"/api/jobs/{jobs['bob']}", f"/api/jobs/{jobs['bob']}/results"]
        for path in theirs:
            for name, headers in (("other-user", {}), ("forged-header", {USER_HEADER: "bob"})):
                answers = attempt(record, family, name, partial(
                    exchange, alice.port, request("GET", path, headers)))
                record.expect(family, statuses(answers) == [404],
                              f"alice read bob's {path}: {statuses(answers)}")
        around = attempt(record, family, "around-the-proxy", lambda: exchange(
            stack.web_port, request("GET", theirs[1], {USER_HEADER: "bob"})))
        record.expect(family, statuses(around) == [401],
                      f"a forged header around the proxy answered {statuses(around)}")
        everyone = attempt(record, family, "operator-list", lambda: exchange(
            operator.port, request("GET", "/api/jobs")))
        record.expect(family, set(jobs.values()) <= listed(everyone),
                      "the operator did not see every job")
