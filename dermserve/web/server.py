"""The page's HTTP server: uvicorn (h11) serving web/app.py's application, with the limits a
hostile network needs. h11 parses every request head strictly (a malformed head, a bad
Content-Length such as '²' or one of more than 20 digits, or an unknown transfer coding gets
400), reads every body by its framing (an unread body is skipped, never parsed as a request) and
sends no body after HEAD; `BoundedH11Protocol` adds what uvicorn lacks:

- a connection that has not sent a complete request head within `header_timeout_s` (after it
  opened, or after its last answer) is closed: a slowloris holds a socket for that long, never
  a thread (there are none per connection);
- uvicorn's own 400 carries the security headers (web/guards.py), as its 500 and 503 and every
  answer of the application do through its default headers.

More than `max_connections` connections or requests at once get 503; an idle keep-alive
connection closes after KEEP_ALIVE_S; a request head that h11 is still waiting to complete past
MAX_HEADER_BYTES gets 400 (a complete one that large gets 431 from web/guards.py). SIGTERM
stops accepting, lets requests in flight finish (GRACEFUL_SHUTDOWN_S at most) and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dermserve.web import defaults
from dermserve.web.app import PageApp, create_app
from dermserve.web.front import FrontClient
from dermserve.web.guards import SECURITY_HEADERS
from dermserve.web.settings import WebSettings

log = logging.getLogger("dermserve.web")

MALFORMED = json.dumps({"error": {"code": "INVALID_ARGUMENT", "reason": "MALFORMED_REQUEST",
                                  "message": "the request is not valid HTTP/1.1"}}).encode()
LISTEN_BACKLOG = 1024  # connections the kernel queues before uvicorn accepts them


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head and headers on its 400."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn logs each request whenever its access logger has a handler (a root handler
        # counts); web/guards.py logs the path escaped and capped instead.
        self.access_log = False
        self.header_timeout_s = header_timeout_s
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def arm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_timed_out)

    def head_timed_out(self) -> None:
        """Close the connection if it is still waiting for a request head."""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection that sent no complete request head in %.0f s",
                     self.header_timeout_s)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's answer, if any, goes nowhere
            self.cycle.message_event.set()
        headers = [*self.server_state.default_headers, (b"content-type", b"application/json"),
                   (b"content-length", b"%d" % len(MALFORMED)), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=MALFORMED), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass  # an answer had begun: the close alone tells the client
        self.transport.close()


def bind(listen_address: str) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free one), so the port is known before
    the server runs and connections queue meanwhile."""
    host, _, port = listen_address.rpartition(":")
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def protocol_factory(settings: WebSettings) -> Any:
    def create(*args: Any, **kwargs: Any) -> BoundedH11Protocol:
        return BoundedH11Protocol(*args, header_timeout_s=settings.header_timeout_s, **kwargs)
    return create


class WebServer:
    """uvicorn on a socket bound at construction; `serve_forever` runs it in the calling thread
    (the main thread: SIGTERM and SIGINT stop it gracefully), `shutdown` stops it from another."""

    def __init__(self, settings: WebSettings, client: FrontClient) -> None:
        self.settings, self.client = settings, client
        self.page = PageApp(settings, client)
        self.socket = bind(settings.listen_address)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.page), http=protocol_factory(settings), lifespan="off",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            headers=list(SECURITY_HEADERS.items()), limit_concurrency=settings.max_connections,
            timeout_keep_alive=defaults.KEEP_ALIVE_S, backlog=LISTEN_BACKLOG,
            h11_max_incomplete_event_size=defaults.MAX_HEADER_BYTES,
            timeout_graceful_shutdown=defaults.GRACEFUL_SHUTDOWN_S)
        self.server = uvicorn.Server(config)
        self.stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread) and wait until the server has stopped."""
        self.server.should_exit = True
        self.stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def check(settings: WebSettings) -> None:
    """Refuse settings that would give every signed-in user one identity."""
    if settings.behind_proxy and not settings.connection.token:
        raise SystemExit("dermserve-web: --trusted-proxies needs --token (DERMSERVE_TOKEN), a "
                         "token the front lets delegate (delegate=users in its tokens file)")


def create_web_server(settings: WebSettings, client: FrontClient) -> tuple[WebServer, int]:
    """The server bound to `settings.listen_address` (port 0: any) and the port it got."""
    check(settings)
    server = WebServer(settings, client)
    return server, server.port


def serve(settings: WebSettings) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and stop."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    client = FrontClient(settings)
    server, port = create_web_server(settings, client)
    log.info("dermserve-web on http://%s (front %s)", settings.listen_address.rsplit(":", 1)[0]
             + f":{port}", settings.connection.target)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        client.close()
