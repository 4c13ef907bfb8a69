"""The checks every request passes before a route sees it, as one ASGI middleware (`Guards`):

- size: a request head over MAX_HEADER_BYTES gets 431 (h11 cuts off only an incomplete one);
- framing: a request with both Content-Length and Transfer-Encoding is refused (400) and its
  connection closed, so no proxy before the page can read its body differently (h11 does the
  rest: a malformed head, a bad Content-Length or an unknown coding never reach the app);
- Host: only the allowed names (421 otherwise), against DNS rebinding; the probes are exempt,
  since kubelet names the pod's address;
- CSRF: every request that is not GET or HEAD needs the page's own `X-Dermserve-Page: 1` header
  (a cross-site form cannot send it, and a cross-site script cannot without a CORS preflight that
  the page never answers), and an `Origin` or `Sec-Fetch-Site`, when the browser sends one, that
  is this origin (403 otherwise);
- identity: with an authenticating proxy configured, /api/* needs the user it names (401);
- every answer: `Connection: close` on a refusal of a request that carries a body, so that no
  unread body is waited for or read as a request;
- the access log: method, path (escaped, capped) and status; never a query string or a body.

The security headers (CSP and the rest, and `Cache-Control: no-store`: results and job lists name
patients' images) are uvicorn's default headers (web/server.py), so its own answers (503 over the
connection limit, 500, 400 for a malformed request) carry them too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dermserve.web import defaults
from dermserve.web.identity import IdentityPolicy, InvalidIdentity, WebUser
from dermserve.web.settings import WebSettings

log = logging.getLogger("dermserve.web")

SECURITY_HEADERS = {
    # Overlays come as data: URLs from the API, the dropped image as a blob: URL of the browser.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}
PAGE_HEADER = "x-dermserve-page"
"""The header the page's scripts send with every POST (web/static/classify.js)."""
SAFE_METHODS = frozenset({"GET", "HEAD"})
PROBES = frozenset({"/healthz", "/readyz"})
SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})
LOGGED_PATH_SAFE = "/-._~!$&'()*+,;=:@"  # printable ASCII kept as is; all else %-escaped
USER_SCOPE_KEY = "dermserve.user"
"""Where the request's WebUser (or None) waits for the route, in the ASGI scope."""

Refusal = tuple[int, str, str]  # status, reason, message


CODES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 408: "DEADLINE_EXCEEDED",
         503: "UNAVAILABLE"}
"""The gRPC-style code of the page's own refusals by HTTP status (else INVALID_ARGUMENT), so that
they read like the front's errors in the page's JSON."""


def code_of(status: int) -> str:
    return CODES.get(status, "INVALID_ARGUMENT")


def error_body(status: int, reason: str, message: str) -> bytes:
    code = code_of(status)
    return json.dumps({"error": {"code": code, "reason": reason, "message": message}}).encode()


def logged_path(path: str) -> str:
    """A request path fit for one log line: escapes and non-ASCII %-escaped, capped."""
    escaped = quote(path[:defaults.MAX_LOGGED_PATH_CHARS], safe=LOGGED_PATH_SAFE)
    return escaped + ("..." if len(path) > defaults.MAX_LOGGED_PATH_CHARS else "")


def host_name(host: str) -> str:
    """'Example.org:8080' -> 'example.org', '[::1]:8080' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def head_size(scope: Scope) -> int:
    """Bytes of the request's target and headers, about as they came."""
    fields = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    return len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + fields


def has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


class Guards:
    """The checks above, around the page's routes."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.allowed_hosts = frozenset(settings.allowed_hosts)
        self.identity = IdentityPolicy(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        answer = self.answering(scope, headers, send)
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, answer)
            return
        status, reason, message = refusal
        body = error_body(status, reason, message)
        await answer({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await answer({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope, headers: Headers) -> Refusal | None:
        """Why the request is refused before any route, or None; binds the user otherwise."""
        if head_size(scope) > defaults.MAX_HEADER_BYTES:
            return 431, "HEADERS_TOO_LARGE", (f"the request head is over "
                                              f"{defaults.MAX_HEADER_BYTES} bytes")
        if "transfer-encoding" in headers and "content-length" in headers:
            return 400, "AMBIGUOUS_FRAMING", "Content-Length and Transfer-Encoding together"
        path = scope["path"]
        if path not in PROBES and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return 421, "HOST_NOT_ALLOWED", "this server does not answer for that host name"
        if scope["method"] not in SAFE_METHODS and not self.same_origin(headers):
            return 403, "CROSS_SITE_REQUEST", "the request does not come from this page"
        try:
            client = scope.get("client")
            user = self.identity.user_of(client[0] if client else None, headers)
        except InvalidIdentity as exc:
            return 401, "INVALID_IDENTITY", str(exc)
        if user is None and self.identity.required and path.startswith("/api/"):
            return 401, "SIGN_IN_REQUIRED", "sign in through the hospital's login first"
        scope[USER_SCOPE_KEY] = user
        return None

    @staticmethod
    def same_origin(headers: Headers) -> bool:
        if headers.get(PAGE_HEADER) != "1":
            return False
        if headers.get("sec-fetch-site", "none") not in SAME_ORIGIN_FETCHES:
            return False
        origin = headers.get("origin")
        return origin is None or urlsplit(origin).netloc.lower() == headers.get(
            "host", "").lower()

    def answering(self, scope: Scope, headers: Headers,
                  send: Send) -> Callable[[Message], Awaitable[None]]:
        """`send`, adding a close after a refused body, and logging the status."""
        closes = has_body(headers)

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                if closes and message["status"] >= 400:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
                log.info("%s %s %s", scope["method"], logged_path(scope["path"]),
                         message["status"])
            await send(message)

        return answer


def scope_user(scope: Scope) -> WebUser | None:
    """The user Guards bound for this request (None: the local user, the page's token)."""
    user = scope.get(USER_SCOPE_KEY)
    return user if isinstance(user, WebUser) else None
