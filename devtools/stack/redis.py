"""The one redis-server launcher: the local stack (devtools/stack/launcher.py) runs its command line
as a child it supervises, and the benchmarks and the tests start a `RedisServer` that they can stop
and start again on the same port and directory (AOF on, so a restart keeps the data)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from devtools.stack.ports import free_port

READY_TIMEOUT_S = 60.0  # seconds for a new redis-server to answer PING on two busy cores
POLL_S = 0.05  # seconds between PINGs while it starts


def redis_binary() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_command(port: int, directory: Path, fsync_always: bool = False) -> list[str]:
    """redis-server on 127.0.0.1:`port`, AOF on in `directory`, no RDB snapshots.
    `fsync_always` makes every write durable before it is acknowledged (the recovery tests kill
    Redis and expect every acknowledged write back)."""
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--dir", str(directory)]
    if fsync_always:
        command += ["--appendfsync", "always"]
    return command


def pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class RedisServer:
    """A redis-server process on loopback that its owner can stop and start again."""

    def __init__(self, directory: Path, port: int | None = None,
                 fsync_always: bool = False) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.fsync_always = fsync_always
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> RedisServer:
        """Start it and return once it answers PING (RuntimeError after `timeout_s`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            redis_command(self.port, self.directory, self.fsync_always),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        try:
            deadline = time.monotonic() + timeout_s
            while not pings(client):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(POLL_S)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """SIGTERM: redis flushes the AOF and exits."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
