"""Free TCP ports on loopback, for the stack, the benchmarks and the tests."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 at the time of the call (all bound at once, so
    they differ). Another process may take one before the caller binds it: callers bind soon."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One port free on 127.0.0.1 at the time of the call."""
    return free_ports(1)[0]
