"""The authenticating proxy's part, played on loopback: what ingress-nginx with oauth2-proxy does
for the page in deploy/. Each `AuthProxy` listens on a port of its own for one signed-in user
(the session a cookie would carry), parses every request with h11 (so nothing can be smuggled
past it), drops any identity header the client sent, adds the user's, buffers the body up to
nginx's proxy-body-size and forwards the request from its own source address, the one the page
trusts (PROXY_ADDRESS: any 127.0.0.0/8 address is loopback on Linux, so an attacker on
127.0.0.1 is not the proxy)."""

from __future__ import annotations

import http.client
import socket
import threading

import h11

PROXY_ADDRESS = "127.0.0.2"
USER_HEADER, GROUPS_HEADER = "x-forwarded-user", "x-forwarded-groups"
STRIPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te",
                      "upgrade", "proxy-connection", "x-forwarded-email",
                      "x-forwarded-preferred-username", USER_HEADER, GROUPS_HEADER})
"""Hop-by-hop headers and every identity header a client may try to forge."""
MAX_BODY_BYTES = 11 * 1024 * 1024  # the Ingress's proxy-body-size (deploy/base/web/ingress.yaml)
MAX_HEAD_BYTES = 16 * 1024
CLIENT_TIMEOUT_S = 10.0  # seconds a client may leave the proxy waiting (nginx: 60 s)
UPSTREAM_TIMEOUT_S = 60.0


class AuthProxy:
    """A reverse proxy to the page on `upstream_port` that signs every request in as `user`."""

    def __init__(self, upstream_port: int, user: str, groups: str = "") -> None:
        self.upstream_port, self.user, self.groups = upstream_port, user, groups
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.accept, name=f"proxy-{user}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        client.settimeout(CLIENT_TIMEOUT_S)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while self.one_exchange(client, conn):
                conn.start_next_cycle()
        except (h11.ProtocolError, OSError):
            pass
        finally:
            client.close()

    def one_exchange(self, client: socket.socket, conn: h11.Connection) -> bool:
        """Answer one request; whether the connection may carry another."""
        head = next_event(client, conn)
        if not isinstance(head, h11.Request):
            return False
        body = bytearray()
        while not isinstance(event := next_event(client, conn), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                return False
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                send(client, conn, 413, [], b"request body too large\n")
                return False
        method, target = head.method.decode("ascii"), head.target.decode("ascii")
        status, headers, payload = self.forward(method, target, self.proxied_headers(head),
                                                bytes(body))
        send(client, conn, status, headers, payload, head_only=method == "HEAD")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def proxied_headers(self, head: h11.Request) -> dict[str, str]:
        kept = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers
                if name.decode("latin-1") not in STRIPPED}  # h11 gives the names lower-case
        return kept | {USER_HEADER: self.user, GROUPS_HEADER: self.groups}

    def forward(self, method: str, target: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                              timeout=UPSTREAM_TIMEOUT_S,
                                              source_address=(PROXY_ADDRESS, 0))
        try:
            upstream.request(method, target, body=body if body or method == "POST" else None,
                             headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            kept = [(name, value) for name, value in answer.getheaders()
                    if name.lower() not in STRIPPED]
            return answer.status, kept, payload
        except (OSError, http.client.HTTPException):
            return 502, [], b"bad gateway\n"
        finally:
            upstream.close()


def next_event(client: socket.socket, conn: h11.Connection) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(client.recv(65536))


def send(client: socket.socket, conn: h11.Connection, status: int,
         headers: list[tuple[str, str]], payload: bytes, head_only: bool = False) -> None:
    framing = [] if head_only else [("content-length", str(len(payload)))]
    client.sendall(conn.send(h11.Response(status_code=status, headers=[*headers, *framing]))
                   or b"")
    if payload and not head_only:
        client.sendall(conn.send(h11.Data(data=payload)) or b"")
    client.sendall(conn.send(h11.EndOfMessage()) or b"")
