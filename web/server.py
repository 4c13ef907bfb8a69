"""The page's HTTP server (the standard library's ThreadingHTTPServer): static files, a small
JSON API the page's script calls, and the probes. Every answer carries the security headers; the
page has no inline script or style, so the Content-Security-Policy allows only this origin.

Routes:
    GET  /  /jobs  /model            the pages (classify, batch jobs, model card)
    GET  /static/<file>              their scripts and styles
    POST /api/analyze                one image's bytes in, its result as JSON (413 over the limit)
    GET  /api/config                 the upload limit and the notice, for the page
    GET  /api/model?version=N        a version's model card summary
    GET  /api/jobs?page_token=T      a page of the page identity's batch jobs, newest first
    GET  /api/jobs/<id>              a batch job's progress
    GET  /api/jobs/<id>/results      its results, as a JSON Lines download
    GET  /healthz  /readyz           liveness; readiness (the front answers SERVING)

Nothing uploaded is stored or logged: the access log has the method, the path and the status,
never a body, and an image is dropped when its request ends.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from web.front import FrontClient, FrontError
from web.settings import WebSettings

log = logging.getLogger("dermserve.web")

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/": ("classify", "classify lesion images"), "/jobs": ("jobs", "batch jobs"),
         "/model": ("model", "model card")}
"""Each page is layout.html (the notice and the navigation, the same on every page) around its
NAME.main.html, with its own NAME.js."""
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Overlays come as data: URLs from the API, the dropped image as a blob: URL of the browser.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HTTP_STATUS = {"INVALID_ARGUMENT": 422, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 409, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
"""HTTP status of a failed front call by gRPC code; any other (the page's own token refused, an
internal fault) is the gateway's problem: 502."""
DRAIN_CHUNK_BYTES = 64 * 1024
NO_SUCH_PAGE = FrontError("NOT_FOUND", "NO_SUCH_PAGE", "no such page")
NOTICE = ("dermserve is a research tool for decision support, not a diagnostic device. "
          "Every result needs a clinician's judgement.")


def load_static() -> dict[str, bytes]:
    """The page's files, read once: the server never reads a path a request names."""
    return {path.name: path.read_bytes() for path in STATIC_DIR.iterdir()
            if path.suffix in CONTENT_TYPES and not path.name.endswith(".html")}


def assemble_pages() -> dict[str, bytes]:
    """The pages by path, put together once at start."""
    layout = (STATIC_DIR / "layout.html").read_text(encoding="utf-8")
    pages = {}
    for path, (name, title) in PAGES.items():
        current = f'<a href="{path}">'
        text = (layout.replace("{title}", f"dermserve: {title}")
                .replace("{script}", f"{name}.js")
                .replace("{main}", (STATIC_DIR / f"{name}.main.html").read_text(encoding="utf-8"))
                .replace(current, current[:-1] + ' aria-current="page">'))
        pages[path] = text.encode()
    return pages


def too_large(limit: int) -> FrontError:
    # The same reason and words as the API's own check (core/validation.py).
    return FrontError("INVALID_ARGUMENT", "IMAGE_TOO_LARGE",
                      f"the image is larger than the limit of {limit} bytes")


class WebServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: settings, the front client, the files."""

    daemon_threads = True

    def __init__(self, settings: WebSettings, client: FrontClient) -> None:
        host, _, port = settings.listen_address.rpartition(":")
        super().__init__((host.strip("[]"), int(port)), Handler)
        self.settings, self.client = settings, client
        self.static, self.pages = load_static(), assemble_pages()


class Handler(BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"
    server_version = "dermserve-web"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only (no query string): a job id is the user's, not a patient's, but a
        # query string is where a careless link would carry one.
        log.info("%s %s %s", self.command, urlsplit(self.path).path, code)

    def send(self, status: int, body: bytes, content_type: str,
             extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json",
                  {"Cache-Control": "no-store"})

    def send_error_json(self, error: FrontError, status: int | None = None) -> None:
        self.send_json(status or HTTP_STATUS.get(error.code, 502), {"error": error.as_json()})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        try:
            self.route_get(unquote(url.path), parse_qs(url.query))
        except FrontError as exc:
            self.send_error_json(exc)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()  # `send` writes no body for HEAD

    def route_get(self, path: str, query: dict[str, list[str]]) -> None:
        if path in self.server.pages:
            self.send(200, self.server.pages[path], CONTENT_TYPES[".html"])
        elif path.startswith("/static/"):
            self.send_static(path.removeprefix("/static/"))
        elif path == "/healthz":
            self.send_json(200, {"status": "ok"})
        elif path == "/readyz":
            serving = self.server.client.serving()
            self.send_json(200 if serving else 503, {"front_serving": serving})
        elif path == "/api/config":
            self.send_json(200, {"max_image_bytes": self.server.settings.max_image_bytes,
                                 "notice": NOTICE})
        elif path == "/api/model":
            self.send_json(200, self.server.client.model(version_of(query)))
        elif path == "/api/jobs":
            self.send_json(200, self.server.client.job_list((query.get("page_token") or [""])[0]))
        elif path.startswith("/api/jobs/"):
            self.route_job(path.removeprefix("/api/jobs/"))
        else:
            self.send_error_json(NO_SUCH_PAGE, 404)

    def route_job(self, rest: str) -> None:
        job_id, _, what = rest.partition("/")
        if what == "results":
            self.send_results(job_id)
        elif not what:
            self.send_json(200, self.server.client.job(job_id))
        else:
            self.send_error_json(NO_SUCH_PAGE, 404)

    def send_static(self, name: str) -> None:
        body = self.server.static.get(name)
        if body is None:
            self.send_error_json(NO_SUCH_PAGE, 404)
            return
        self.send(200, body, CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))

    def send_results(self, job_id: str) -> None:
        lines = self.server.client.results(job_id)
        first = next(lines, b"")  # an unknown job fails here, before the headers go out
        self.send_response(200)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Disposition", f'attachment; filename="{safe_name(job_id)}'
                                                f'-results.jsonl"')
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in chained(first, lines):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        except FrontError as exc:
            # The status is sent: cut the download short (no final chunk), so the browser
            # reports it as failed rather than complete.
            log.warning("results of a job cut short: %s", exc)
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path != "/api/analyze":
            self.send_error_json(NO_SUCH_PAGE, 404)
            return
        image = self.read_image()
        if image is None:
            return
        try:
            self.send_json(200, self.server.client.analyze(image))
        except FrontError as exc:
            self.send_error_json(exc)

    def read_image(self) -> bytes | None:
        """The request's body, or None once a 411 or a 413 is sent."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.send_json(411, {"error": {"code": "INVALID_ARGUMENT", "reason": "NO_LENGTH",
                                           "message": "the upload needs a Content-Length"}})
            return None
        limit = self.server.settings.max_image_bytes
        if int(length) > limit:
            self.discard(int(length))
            self.send_error_json(too_large(limit), 413)
            return None
        return self.rfile.read(int(length))

    def discard(self, length: int) -> None:
        """Read a refused body without keeping it, so the client reads the 413 instead of a
        reset connection; a body far over the limit is not read, the connection is closed."""
        if length > 4 * self.server.settings.max_image_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, DRAIN_CHUNK_BYTES))
            if not chunk:
                return
            length -= len(chunk)


def chained(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def safe_name(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)[:64] or "job"


def version_of(query: dict[str, list[str]]) -> int | None:
    text = (query.get("version") or [""])[0]
    if not text:
        return None
    if not text.isdigit():
        raise FrontError("INVALID_ARGUMENT", "INVALID_VERSION", "a version is a positive integer")
    return int(text)


def create_web_server(settings: WebSettings, client: FrontClient) -> tuple[WebServer, int]:
    """The server bound to `settings.listen_address` (port 0: any) and the port it got."""
    server = WebServer(settings, client)
    return server, server.server_address[1]


def serve(settings: WebSettings) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    client = FrontClient(settings)
    server, port = create_web_server(settings, client)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("dermserve-web on http://%s (front %s)", settings.listen_address.rsplit(":", 1)[0]
             + f":{port}", settings.target)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        client.close()
