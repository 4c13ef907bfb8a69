"""A small process supervisor for the local stack (`make run`, devtools/stack/launcher.py) and the
soak.

Each child that exits without being asked to (a SIGKILL, the OOM killer, a crash, or a clean exit
nobody requested) is logged and started again after a backoff, while the other children keep
serving. The backoff doubles with each exit inside the crash window, from
`initial_delay_s` up to `max_delay_s`. A child that exits `crash_limit` times within
`crash_window_s` is crash-looping: restarting it again would only hide the fault, so the
supervisor gives up (CrashLoop), and the launcher stops everything and exits non-zero with a line
naming the child and its exit codes.

Polled, not event-driven: `check()` is called every `POLL_S` by the launcher's loop, which is
also where Ctrl-C and SIGTERM land, so a restart and a stop never race each other.

With a Console (devtools/stack/console.py) each child runs in a process group of its own and its
output is piped through the console, prefixed with its name. Its own group: a Ctrl-C in the terminal
reaches the launcher only, which stops the children in order (`stop()`): everything but the
children marked `last` at once, then those (Redis), so that a worker stopping mid-chunk can still
hand its chunk back to Redis.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.stack.console import Console

log = logging.getLogger("dermserve.stack")

DEFAULT_RESTART_DELAY_S = 1.0
"""Seconds before the first restart of a child that exited: long enough that a child failing at
once (a port still taken) does not spin, short enough that a killed worker is back at once."""
DEFAULT_MAX_RESTART_DELAY_S = 30.0  # seconds; the doubling stops here
DEFAULT_CRASH_WINDOW_S = 300.0
"""Seconds over which a child's exits are counted: five minutes covers a front or worker that
loads TensorFlow and a model (up to a minute on two busy cores) and dies again each time."""
DEFAULT_CRASH_LIMIT = 5  # exits of one child within the window before the supervisor gives up
STOP_TIMEOUT_S = 25.0  # seconds a child may take to stop: the front's grace period (20 s) + margin


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited is started again, and when the supervisor gives up on it."""

    initial_delay_s: float = DEFAULT_RESTART_DELAY_S
    max_delay_s: float = DEFAULT_MAX_RESTART_DELAY_S
    crash_window_s: float = DEFAULT_CRASH_WINDOW_S
    crash_limit: int = DEFAULT_CRASH_LIMIT

    def delay_s(self, recent_exits: int) -> float:
        """The wait before the next start, after `recent_exits` exits inside the window."""
        return min(self.initial_delay_s * 2.0 ** max(recent_exits - 1, 0), self.max_delay_s)


class CrashLoop(Exception):
    """A child exited `crash_limit` times within the crash window."""

    def __init__(self, name: str, codes: Sequence[int], window_s: float,
                 last_said: str = "") -> None:
        super().__init__(f"{name} exited {len(codes)} times within {window_s:.0f} s "
                         f"(exit codes {', '.join(describe_exit(code) for code in codes)})")
        self.name = name
        self.codes = list(codes)
        self.last_said = last_said  # the child's last line of output: usually the cause


def describe_exit(code: int) -> str:
    """`1`, or `-9 (SIGKILL)` for a child ended by a signal."""
    if code >= 0:
        return str(code)
    try:
        return f"{code} ({signal.Signals(-code).name})"
    except ValueError:
        return str(code)


@dataclass
class Child:
    """One supervised process: its command, its current Popen and its recent exits."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    exits: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, exit code)
    restart_at: float | None = None
    starts: int = 0
    last: bool = False  # stopped after the others (Redis, which they need while they stop)
    reader: threading.Thread | None = None  # copies its output to the console, until EOF

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self, console: Console | None = None) -> None:
        log.debug("starting %s: %s", self.name, " ".join(self.command))
        if console is None:
            self.popen = subprocess.Popen(self.command, env={**os.environ, **self.env})
        else:
            self.popen = subprocess.Popen(self.command, env={**os.environ, **self.env},
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          process_group=0)
            assert self.popen.stdout is not None
            self.reader = console.follow(self.name, self.popen.stdout)
        self.restart_at = None
        self.starts += 1

    def exit_code(self) -> int | None:
        """The exit code if the current process has exited, else None."""
        return self.popen.poll() if self.popen is not None else None

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()

    def wait(self, timeout_s: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout_s)
            log.debug("%s exited with code %s", self.name, describe_exit(self.popen.returncode))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.popen.kill()
            self.popen.wait()


class Supervisor:
    """Starts the children in order, restarts those that exit, stops them all on request."""

    def __init__(self, children: Sequence[Child], policy: RestartPolicy = RestartPolicy(),
                 pids_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 console: Console | None = None) -> None:
        self.children = list(children)
        self.policy = policy
        self.pids_file = pids_file
        self.clock = clock
        self.console = console

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def start(self) -> None:
        for child in self.children:
            child.start(self.console)
        self.write_pids()

    def check(self) -> None:
        """One look at every child: note exits, start those whose backoff is over. Raises
        CrashLoop when a child has exited too often."""
        now = self.clock()
        started = False
        for child in self.children:
            if child.restart_at is None:
                code = child.exit_code()
                if code is not None:
                    self._exited(child, code, now)
            elif now >= child.restart_at:
                child.start(self.console)
                started = True
        if started:
            self.write_pids()

    def _exited(self, child: Child, code: int, now: float) -> None:
        window_start = now - self.policy.crash_window_s
        child.exits = [(at, c) for at, c in child.exits if at >= window_start] + [(now, code)]
        if len(child.exits) >= self.policy.crash_limit:
            last_said = self.console.last_line.get(child.name, "") if self.console else ""
            raise CrashLoop(child.name, [c for _, c in child.exits], self.policy.crash_window_s,
                            last_said)
        delay = self.policy.delay_s(len(child.exits))
        child.restart_at = now + delay
        log.error("%s (pid %s) exited with code %s; restarting it in %.1f s (exit %d of %d "
                  "allowed within %.0f s); the rest of the stack keeps serving", child.name,
                  child.pid, describe_exit(code), delay, len(child.exits),
                  self.policy.crash_limit - 1, self.policy.crash_window_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every child but the `last` ones and wait for them (SIGKILL after
        `timeout_s`), then the same for the `last` ones."""
        for group in ([c for c in self.children if not c.last],
                      [c for c in self.children if c.last]):
            for child in group:
                child.stop()
            for child in group:
                child.wait(timeout_s)

    def write_pids(self) -> None:
        """{name: pid} of the running children, replaced atomically, for the soak and tests."""
        if self.pids_file is None:
            return
        pids = {child.name: child.pid for child in self.children if child.pid is not None}
        temporary = self.pids_file.with_name(self.pids_file.name + ".tmp")
        temporary.write_text(json.dumps(pids), encoding="utf-8")
        temporary.replace(self.pids_file)
