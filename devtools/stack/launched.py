"""The `make run` launcher (devtools/stack/launcher.py) as a child of a soak or a test: its own
ports and directories, its children's pids read from its --pids-file, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from devtools.stack.health import wait_until_serving
from devtools.stack.ports import free_ports
from devtools.stack.supervisor import STOP_TIMEOUT_S

LAUNCHER_STOP_TIMEOUT_S = 2 * STOP_TIMEOUT_S + 10.0
"""Seconds the launcher may take to stop: its children's stop timeout, then their SIGKILL."""


@dataclass(frozen=True)
class StackLayout:
    """Where a launched stack listens and keeps its state."""

    workdir: Path
    model_base: Path
    input_roots: tuple[Path, ...]
    grpc_port: int
    redis_port: int
    web_port: int

    @classmethod
    def on_free_ports(cls, workdir: Path, model_base: Path,
                      input_roots: Sequence[Path]) -> StackLayout:
        grpc_port, redis_port, web_port = free_ports(3)
        return cls(workdir, model_base, tuple(input_roots), grpc_port, redis_port, web_port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pids_file(self) -> Path:
        return self.workdir / "pids.json"

    def command(self, extra: Sequence[str] = ()) -> list[str]:
        roots = [arg for root in self.input_roots for arg in ("--input-root", str(root))]
        return [sys.executable, "-m", "devtools.stack", "--model-base", str(self.model_base),
                "--demo-base", str(self.model_base), "--listen", self.target,
                "--metrics-port", "0", "--worker-metrics-port", "0",
                "--redis-port", str(self.redis_port), "--web-listen", f"127.0.0.1:{self.web_port}",
                "--var-dir", str(self.workdir / "var"),
                "--pids-file", str(self.pids_file), *roots, *extra]


class LaunchedStack:
    """A running launcher; its output (and its children's) goes to `log`."""

    def __init__(self, layout: StackLayout, log: IO[bytes], extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.layout = layout
        layout.workdir.mkdir(parents=True, exist_ok=True)
        # A session of its own: a signal meant for the caller's group does not reach the stack,
        # and stop() can end the whole group if the launcher itself hangs.
        self.process = subprocess.Popen(layout.command(extra_args),
                                        env={**os.environ, **(env or {})},
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def pids(self) -> dict[str, int]:
        """{child name: pid} as the launcher last wrote it ({} before it wrote any)."""
        try:
            return {name: int(pid) for name, pid in
                    json.loads(self.layout.pids_file.read_text(encoding="utf-8")).items()}
        except FileNotFoundError:
            return {}

    def wait_until_serving(self, timeout_s: float) -> bool:
        with grpc.insecure_channel(self.layout.target) as channel:
            return wait_until_serving(channel, timeout_s, self.exited)

    def stop(self) -> int:
        """SIGTERM the launcher (it stops its children) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(LAUNCHER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
