"""HTTP/1.1 by hand, for what an HTTP client library will not send: smuggling attempts, heads
held open, bodies cut short. `exchange` writes bytes on a fresh connection and reads until the
server closes it; `parse` splits what came back into answers (Content-Length or chunked)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

READ_TIMEOUT_S = 30.0  # seconds a read may wait: far above any answer, so only a hang hits it


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    """A connection to `host:port`, from the loopback address `source` if given."""
    sock = socket.create_connection((host, port), timeout=READ_TIMEOUT_S,
                                    source_address=(source, 0) if source else None)
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def exchange(port: int, data: bytes, source: str | None = None) -> list[Answer]:
    """The answers to `data`, whose last request should ask `Connection: close`."""
    with connect(port, source=source) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the end of the body and closed: read the answer
        return parse(read_all(sock))


def request(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", close: bool = True) -> bytes:
    """One request's bytes; Host 127.0.0.1 and a Content-Length for a body unless given."""
    fields = {"Host": "127.0.0.1", **({"Content-Length": str(len(body))} if body else {}),
              **(headers or {}), **({"Connection": "close"} if close else {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def parse(raw: bytes) -> list[Answer]:
    answers = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        if not separator:
            break
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body, raw = split_body(headers, rest)
        answers.append(Answer(int(status_line.split()[1]), headers, body))
    return answers


def split_body(headers: dict[str, str], rest: bytes) -> tuple[bytes, bytes]:
    """(this answer's body, what follows it)."""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                return body, rest
        return body, b""
    length = int(headers.get("content-length", "0"))
    return rest[:length], rest[length:]
