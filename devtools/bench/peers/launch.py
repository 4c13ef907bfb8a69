"""Starting a reference peer, from the benchmark's (the project's) environment: each on free
loopback ports, from its own virtualenv, its output in a log file, ready once it says its model
is, stopped (with every process it forked) on the way out.

`running_peer(name, ...)` yields a `Peer`: how to make a client of it (clients.py) and a probe
of its whole process tree (CPU, RSS), since MLServer and BentoML run the model in a child."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from devtools import proc
from devtools.bench.harness import ServerProbe
from devtools.bench.peers import clients
from devtools.bench.peers.served_model import MODEL_DIR_ENV
from devtools.stack.ports import free_ports
from devtools.stack.process import child_environment

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 300.0  # seconds; three TensorFlow processes may start on a loaded 2-core box
STOP_TIMEOUT_S = 60.0  # seconds; BentoML's arbiter waits for a starting worker before it stops
READY_POLL_S = 0.5  # seconds between readiness questions while a peer loads its model
BENTO_PATH, BENTO_FIELD = "/classify", "images"  # bento_peer.py's API and its argument


class TreeProbe(ServerProbe):
    """The harness's server probe over a process and everything it forked: CPU seconds only."""

    def counters(self) -> dict[str, float]:
        cpu = proc.tree_cpu_s(self.pid)
        return {} if cpu is None else {"cpu_s": cpu}

    def rss_bytes(self) -> int | None:
        return proc.tree_rss_bytes(self.pid)


@dataclass(frozen=True)
class Peer:
    """A started peer: its name and label, a client factory (image in, `clients.Call` out)."""

    name: str
    label: str
    new_client: Callable[[bytes], clients.Call]
    probe: TreeProbe
    log: Path


@dataclass(frozen=True)
class Launch:
    """How to start one peer: its command, environment, readiness check and client."""

    command: list[str]
    ready: Callable[[], bool]
    new_client: Callable[[bytes], clients.Call]
    closers: list[Callable[[], None]]


def venv_python(venv: str) -> str:
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} is missing: run `make peers`")
    return str(python)


def v2_launch(command: list[str], grpc_port: int, model_name: str) -> Launch:
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
        ("grpc.max_send_message_length", -1)])

    def ready() -> bool:
        try:
            return clients.v2_model_ready(channel, model_name, READY_POLL_S * 4)
        except grpc.RpcError:
            return False  # not listening yet, or the model not registered yet

    return Launch(command, ready, partial(clients.v2_client, channel, model_name),
                  [channel.close])


def kserve_launch(version_dir: Path, model_name: str, workdir: Path) -> Launch:
    http_port, grpc_port = free_ports(2)
    command = [venv_python(".venv-kserve"), "-m", "devtools.bench.peers.kserve_peer",
               "--model-dir", str(version_dir), "--model_name", model_name,
               "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    return v2_launch(command, grpc_port, model_name)


def mlserver_launch(version_dir: Path, model_name: str, workdir: Path) -> Launch:
    http_port, grpc_port, metrics_port = free_ports(3)
    command = [venv_python(".venv-mlserver"), "-m", "devtools.bench.peers.mlserver_peer",
               "--model-dir", str(version_dir), "--workdir", str(workdir / "mlserver"),
               "--model-name", model_name, "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    return v2_launch(command, grpc_port, model_name)


def bento_launch(version_dir: Path, model_name: str, workdir: Path) -> Launch:
    (port,) = free_ports(1)
    command = [venv_python(".venv"), "-m", "bentoml", "serve",
               "devtools.bench.peers.bento_peer:Ham10000", "--host", "127.0.0.1",
               "--port", str(port)]

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as page:
                return bool(page.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return Launch(command, ready, partial(clients.bento_client, port, BENTO_PATH, BENTO_FIELD),
                  [])


PEERS: dict[str, tuple[str, Callable[[Path, str, Path], Launch]]] = {
    "kserve": ("KServe 0.21.0, kserve.Model, v2 gRPC, no batching", kserve_launch),
    "mlserver": ("MLServer 1.7.1, custom runtime, v2 gRPC, adaptive batching", mlserver_launch),
    "bentoml": ("BentoML 1.4.40, batchable service, HTTP", bento_launch),
}
"""Each peer's label in the report and how it starts."""


def peer_environment(version_dir: Path) -> dict[str, str]:
    return child_environment({"PYTHONPATH": str(REPO), MODEL_DIR_ENV: str(version_dir.resolve()),
                              # no usage report: this machine has no internet
                              "BENTOML_DO_NOT_TRACK": "True"})


def wait_ready(launch: Launch, process: subprocess.Popen[bytes], log: Path) -> None:
    until = time.monotonic() + START_TIMEOUT_S
    while not launch.ready():
        if process.poll() is not None:
            raise RuntimeError(f"the peer exited with status {process.returncode} (see {log})")
        if time.monotonic() > until:
            raise RuntimeError(f"the peer was not ready in {START_TIMEOUT_S:.0f} s (see {log})")
        time.sleep(READY_POLL_S)  # a loading model: the peers offer nothing to wait on


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the peer, wait for it, then kill whatever it forked that outlived it."""
    forked = proc.descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in forked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_peer(name: str, version_dir: Path, model_name: str,
                 workdir: Path) -> Iterator[Peer]:
    """Peer `name` (a key of PEERS) serving `version_dir` as `model_name`, ready."""
    label, make = PEERS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    launch = make(version_dir, model_name, workdir)
    log = workdir / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(launch.command, cwd=REPO, env=peer_environment(version_dir),
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_ready(launch, process, log)
        yield Peer(name, label, launch.new_client, TreeProbe(process.pid), log)
    finally:
        for close in launch.closers:
            close()
        stop(process)


def names(selected: Sequence[str] | None) -> list[str]:
    """The peers to run: `selected`, or all of them."""
    chosen = list(selected) if selected else list(PEERS)
    unknown = sorted(set(chosen) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {sorted(PEERS)}")
    return chosen
