"""The soak's faults, one after the other on a stack under load: publish a new model version,
SIGKILL the worker, restart Redis, remove an old model version, restart the front. Each is
recorded with when it began and when the stack had recovered from it (the new version serving,
the supervisor's replacement process running, the front SERVING again...), so the report can tell
errors inside a fault's window from those outside it."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis

from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from devtools.soak.load import CallLog
from devtools.stack.health import wait_until_serving
from devtools.stack.launched import LaunchedStack
from devtools.stack.redis import pings

RECOVERY_TIMEOUT_S = 300.0
"""Seconds a fault may take to heal before the soak records it as not recovered: a front or
worker restart imports TensorFlow and loads two model versions on two busy cores."""
POLL_S = 0.5  # seconds between looks at a recovering stack
FRONT_RESTART = "restart_front"


@dataclass
class ChaosEvent:
    """One fault: when it was due, when it began and when the stack had recovered (seconds since
    the soak began; None if it did not)."""

    name: str
    fraction: float
    due_s: float
    start_s: float | None = None
    recovered_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def window(self) -> tuple[float, float] | None:
        if self.start_s is None or self.recovered_s is None:
            return None
        return self.start_s, self.recovered_s


def versions_on_disk(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def publish_version(model_dir: Path) -> int:
    """Copy the latest version as the next one: into a temporary name first, then renamed, so
    the backend's poller never sees a half-copied version."""
    latest = versions_on_disk(model_dir)[-1]
    new = latest + 1
    staging = model_dir / f".publish-{new}"
    shutil.copytree(model_dir / str(latest), staging)
    staging.rename(model_dir / str(new))
    return new


def remove_version(model_dir: Path, version: int) -> None:
    """Renamed away first (gone for the poller at once), then deleted."""
    doomed = model_dir / f".remove-{version}"
    (model_dir / str(version)).rename(doomed)
    shutil.rmtree(doomed)


def until(condition: Callable[[], bool], timeout_s: float = RECOVERY_TIMEOUT_S) -> bool:
    """Poll a recovering stack (it has no other way to say it is back)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


class Chaos:
    """The faults of one soak against `stack`, whose models live in `model_dir`."""

    def __init__(self, stack: LaunchedStack, model_dir: Path, log: CallLog,
                 client_channel: grpc.Channel, job_progress: Callable[[], float]) -> None:
        self.stack = stack
        self.model_dir = model_dir
        self.log = log
        # The unary load's own channel: the front is back when *its* clients are served again.
        self.client_channel = client_channel
        self.models = pb_grpc.LesionClassifierStub(client_channel)
        self.job_progress = job_progress  # the batch job's finished images (inf once it ended)
        self.actions: dict[str, Callable[[ChaosEvent], bool]] = {
            "publish_version": self.publish, "kill_worker": self.kill_worker,
            "restart_redis": self.restart_redis, "remove_old_version": self.remove_old,
            FRONT_RESTART: self.restart_front}

    def run(self, event: ChaosEvent) -> None:
        event.start_s = self.log.now()
        if self.actions[event.name](event):
            event.recovered_s = self.log.now()

    def listed_versions(self) -> dict[int, int]:
        """{version: state} as the front's ListModels says ({} when it does not answer)."""
        try:
            answer = self.models.ListModels(pb.ListModelsRequest(), timeout=10)
        except grpc.RpcError:
            return {}
        return {v.model.version: int(v.state) for v in answer.versions}

    def publish(self, event: ChaosEvent) -> bool:
        version = publish_version(self.model_dir)
        event.detail = {"version": version, "on_disk": versions_on_disk(self.model_dir)}
        return until(lambda: self.listed_versions().get(version)
                     == pb.MODEL_VERSION_STATE_AVAILABLE)

    def remove_old(self, event: ChaosEvent) -> bool:
        version = versions_on_disk(self.model_dir)[0]
        remove_version(self.model_dir, version)
        event.detail = {"version": version, "on_disk": versions_on_disk(self.model_dir)}
        return until(lambda: version not in self.listed_versions())

    def _signal_child(self, name: str, signum: signal.Signals, event: ChaosEvent) -> int:
        pid = self.stack.pids()[name]
        os.kill(pid, signum)
        event.detail = {"pid": pid, "signal": signum.name}
        return pid

    def _replaced(self, name: str, pid: int, event: ChaosEvent) -> bool:
        """Wait for the supervisor to start another `name`."""
        replaced = until(lambda: self.stack.pids().get(name, pid) != pid)
        event.detail["new_pid"] = self.stack.pids().get(name)
        return replaced

    def kill_worker(self, event: ChaosEvent) -> bool:
        """Healed once the new worker is at work: the job moves on (or has already ended)."""
        before = self.job_progress()
        pid = self._signal_child("worker", signal.SIGKILL, event)
        return self._replaced("worker", pid, event) and until(lambda: self._moved_on(before))

    def _moved_on(self, before: float) -> bool:
        now = self.job_progress()
        return now == float("inf") or now > before

    def restart_redis(self, event: ChaosEvent) -> bool:
        pid = self._signal_child("redis", signal.SIGTERM, event)
        client = redis.Redis(port=self.stack.layout.redis_port)
        try:
            return self._replaced("redis", pid, event) and until(lambda: pings(client))
        finally:
            client.close()

    def restart_front(self, event: ChaosEvent) -> bool:
        pid = self._signal_child("front", signal.SIGTERM, event)
        return (self._replaced("front", pid, event) and wait_until_serving(
            self.client_channel, RECOVERY_TIMEOUT_S, self.stack.exited, poll_s=POLL_S))
