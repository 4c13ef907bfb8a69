"""The page's routes, as a Starlette application: static files, a small JSON API the page's
script calls, and the probes; web/guards.py's checks run before each. The page has no inline
script or style, so the Content-Security-Policy allows only this origin.

Routes:
    GET  /  /jobs  /model            the pages (classify, batch jobs, model card)
    GET  /static/<file>              their scripts and styles
    POST /api/analyze                one image's bytes in, its result as JSON (413 over the limit);
                                     optional patient context in X-Dermserve-Age/-Sex/-Site
    GET  /api/config                 the upload limit and the notice, for the page
    GET  /api/model?version=N        a version's model card summary
    GET  /api/jobs?page_token=T      a page of the user's batch jobs, newest first
    GET  /api/jobs/<id>              a batch job's progress
    GET  /api/jobs/<id>/results      its results, as a JSON Lines download
    GET  /healthz  /readyz           liveness; readiness (the front answers SERVING)

An upload is read as it arrives and refused as soon as it passes the limit (413), stalls
(408) or takes too long (408); at most `max_concurrent_uploads` are read at once (the next waits
`upload_wait_s` for a slot, unread, then gets 503 with Retry-After), and only a complete body is
forwarded to the front. Nothing uploaded is
stored or logged: an image is dropped when its request ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from dermserve.core.context import patient_context
from dermserve.core.errors import InvalidContext
from dermserve.protocol.context import to_message
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.web import defaults
from dermserve.web.front import FrontClient, FrontError
from dermserve.web.guards import Guards, code_of, scope_user
from dermserve.web.settings import WebSettings

log = logging.getLogger("dermserve.web")

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/": ("classify", "classify lesion images"), "/jobs": ("jobs", "batch jobs"),
         "/model": ("model", "model card")}
"""Each page is layout.html (the notice and the navigation, the same on every page) around its
NAME.main.html, with its own NAME.js."""
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HTTP_STATUS = {"INVALID_ARGUMENT": 422, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 409, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
"""HTTP status of a failed front call by gRPC code; any other (the page's own token refused, an
internal fault) is the gateway's problem: 502."""
DRAIN_LIMIT_FACTOR = 4
"""A refused upload up to this many times the limit is read to its end (and thrown away) so that
the client reads the 413 rather than a reset connection; a larger one is cut off."""
NOTICE = ("dermserve is a research tool for decision support, not a diagnostic device. "
          "Every result needs a clinician's judgement.")


class Refused(Exception):
    """A request the page itself refuses: its HTTP status and FrontError-shaped reason."""

    def __init__(self, status: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.error = FrontError(code_of(status), reason, message)


class ClientGone(Exception):
    """The client closed the connection before its upload was complete."""


def error_response(status: int, error: FrontError,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error.as_json()}, status, headers)


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


def too_large(limit: int) -> Refused:
    # The same reason and words as the API's own check (core/image/limits.py).
    return Refused(413, "IMAGE_TOO_LARGE", f"the image is larger than the limit of {limit} bytes")


def safe_name(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)[:64] or "job"


def ascii_number(text: str, max_digits: int) -> int | None:
    """`text` as a number if it is 1 to `max_digits` ASCII digits, else None (`str.isdigit`
    also takes '²' and Arabic-Indic digits, which `int` refuses or reads)."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def version_of(request: Request) -> int | None:
    text = request.query_params.get("version", "")
    if not text:
        return None
    version = ascii_number(text, defaults.MAX_VERSION_DIGITS)
    if version is None:
        raise Refused(400, "INVALID_VERSION", "a version is a positive integer of at most "
                                              f"{defaults.MAX_VERSION_DIGITS} digits")
    return version


CONTEXT_HEADERS = {"age_years": "x-dermserve-age", "sex": "x-dermserve-sex",
                   "site": "x-dermserve-site"}
"""Where the form's optional patient context travels with an upload: headers, which no access
log or proxy keeps the way it keeps a URL."""


def context_of(request: Request) -> pb.PatientContext | None:
    """The upload's patient context, checked here (400 INVALID_CONTEXT before the image is
    read) by the core's one validation, or None when the form gave none."""
    given = {name: checked_text(request.headers.get(header, ""), defaults.MAX_CONTEXT_CHARS,
                                "INVALID_CONTEXT", "a patient context value")
             for name, header in CONTEXT_HEADERS.items()}
    try:
        return to_message(patient_context(**given))
    except InvalidContext as exc:
        raise Refused(400, exc.reason, exc.client_message) from None


def checked_text(text: str, limit: int, reason: str, what: str) -> str:
    """`text` unless it is longer than `limit` or holds a control character: then 400, before
    it is forwarded, echoed or logged."""
    if len(text) > limit or not text.isprintable():
        raise Refused(400, reason, f"{what} must be at most {limit} printable characters")
    return text


def job_id_of(request: Request) -> str:
    return checked_text(request.path_params["job_id"], defaults.MAX_JOB_ID_CHARS,
                        "INVALID_JOB_ID", "a job id")


def declared_length(request: Request) -> int:
    """The upload's Content-Length (h11 has checked it is ASCII digits); 411 without one."""
    length = request.headers.get("content-length")
    if length is None:
        raise Refused(411, "NO_LENGTH", "the upload needs a Content-Length")
    return int(length)


async def read_body(request: Request, limit: int, settings: WebSettings) -> bytes:
    """The upload, read as it arrives: 413 past `limit`, 408 when it stalls for
    `body_idle_timeout_s` or takes longer than `upload_timeout_s`; ClientGone if cut short."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.upload_timeout_s):
            while True:
                async with asyncio.timeout(settings.body_idle_timeout_s):
                    message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise Refused(408, "UPLOAD_TIMEOUT", "the upload was too slow and is dropped") from None


async def drain(request: Request, length: int, settings: WebSettings) -> None:
    """Read a refused body to its end without keeping it (see DRAIN_LIMIT_FACTOR)."""
    if length > DRAIN_LIMIT_FACTOR * settings.max_image_bytes:
        return
    try:
        await read_body(request, length, settings)
    except (Refused, ClientGone):
        pass


class PageApp:
    """The routes and what they share: settings, the front client, the files, the upload slots
    and the uploads being read (counted on the event loop's one thread, so no lock)."""

    def __init__(self, settings: WebSettings, client: FrontClient) -> None:
        self.settings, self.client = settings, client
        self.static, self.pages = load_static(), assemble_pages()
        self.slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        self.uploads = 0

    def routes(self) -> list[Route]:
        return [*(Route(path, self.page) for path in PAGES),
                Route("/static/{name}", self.static_file),
                Route("/healthz", self.healthz), Route("/readyz", self.readyz),
                Route("/api/analyze", self.analyze, methods=["POST"]),
                Route("/api/config", self.config), Route("/api/model", self.model),
                Route("/api/jobs", self.jobs), Route("/api/jobs/{job_id}", self.job),
                Route("/api/jobs/{job_id}/results", self.results)]

    async def page(self, request: Request) -> Response:
        return Response(self.pages[request.url.path], media_type=CONTENT_TYPES[".html"])

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self.static.get(name)
        if body is None:
            raise HTTPException(404)
        return Response(body, media_type=CONTENT_TYPES[Path(name).suffix])

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        serving = await run_in_threadpool(self.client.serving)
        return JSONResponse({"front_serving": serving}, 200 if serving else 503)

    async def config(self, request: Request) -> Response:
        return JSONResponse({"max_image_bytes": self.settings.max_image_bytes, "notice": NOTICE})

    async def model(self, request: Request) -> Response:
        card = await run_in_threadpool(self.client.model, version_of(request))
        return JSONResponse(card)

    async def jobs(self, request: Request) -> Response:
        token = checked_text(request.query_params.get("page_token", ""),
                             defaults.MAX_PAGE_TOKEN_CHARS, "INVALID_PAGE_TOKEN", "a page token")
        listed = await run_in_threadpool(self.client.job_list, token, scope_user(request.scope))
        return JSONResponse(listed)

    async def job(self, request: Request) -> Response:
        job = await run_in_threadpool(self.client.job, job_id_of(request),
                                      scope_user(request.scope))
        return JSONResponse(job)

    async def results(self, request: Request) -> Response:
        job_id = job_id_of(request)
        lines = self.client.results(job_id, scope_user(request.scope))
        first = await run_in_threadpool(next, lines, b"")  # an unknown job fails here
        headers = {"Content-Disposition": f'attachment; filename="{safe_name(job_id)}'
                                          '-results.jsonl"'}
        if request.method == "HEAD":
            return Response(media_type="application/x-ndjson", headers=headers)
        return StreamingResponse(chained(first, lines), media_type="application/x-ndjson",
                                 headers=headers)

    async def analyze(self, request: Request) -> Response:
        length, limit = declared_length(request), self.settings.max_image_bytes
        if length > limit:
            await drain(request, length, self.settings)
            raise too_large(limit)
        await self.upload_slot()
        self.uploads += 1
        try:
            context = context_of(request)
            image = await read_body(request, limit, self.settings)
            result = await run_in_threadpool(self.client.analyze, image,
                                             scope_user(request.scope), context)
        finally:
            self.uploads -= 1
            self.slots.release()
        return JSONResponse(result)

    async def upload_slot(self) -> None:
        """Wait for one of the upload slots, or refuse (503) after `upload_wait_s`."""
        try:
            async with asyncio.timeout(self.settings.upload_wait_s):
                await self.slots.acquire()
        except TimeoutError:
            raise Refused(503, "TOO_MANY_UPLOADS", "the page is analysing other images; retry "
                          "shortly", {"Retry-After": str(defaults.RETRY_AFTER_S)}) from None


def chained(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """The results' lines; a front error after the first cuts the download short (the status is
    sent: no final chunk, so the browser reports it as failed rather than complete)."""
    if first:
        yield first
    try:
        yield from rest
    except FrontError as exc:
        log.warning("results of a job cut short: %s %s", exc.code, exc.reason)
        raise


async def front_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FrontError)
    return error_response(HTTP_STATUS.get(exc.code, 502), exc)


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return error_response(exc.status, exc.error, exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody reads it; the half-sent image was dropped


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "NO_SUCH_PAGE", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
    error = FrontError("NOT_FOUND" if exc.status_code == 404 else "INVALID_ARGUMENT", reason,
                       str(exc.detail).lower())
    return error_response(exc.status_code, error, exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (uvicorn's), never to the client.
    return error_response(500, FrontError("INTERNAL", "INTERNAL", "internal error"))


def create_app(page: PageApp) -> ASGIApp:
    """The routes inside Guards: outside even Starlette's error handling, so that a 500 passes
    the guards' headers and the access log like any answer."""
    handlers: dict[Any, Any] = {FrontError: front_failed, Refused: refused,
                                ClientGone: client_gone, HTTPException: http_error,
                                Exception: internal_error}
    routes = Starlette(routes=page.routes(), exception_handlers=handlers)
    return Guards(routes, page.settings)
