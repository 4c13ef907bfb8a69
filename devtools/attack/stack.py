"""The stack under attack, on loopback ephemeral ports: a redis-server, the front service (TLS,
mutual TLS and bearer tokens, a plaintext health-only port, BatchJobs on, its Prometheus exporter
on loopback), one batch worker, and the clinicians' page (a client of the front with mutual TLS
and a delegating token, trusting the authenticating proxy stand-in's address, devtools/attack/
proxy.py), all real processes on a tiny throwaway model, with the service's default limits.
Everything lives under one work directory: the input root the worker
may read (`input/`) and, beside it, files it must never read (`outside/`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from dermserve.core.tls import channel_credentials
from devtools import proc
from devtools.attack.pki import Pki, client_certificate, make_pki
from devtools.attack.proxy import PROXY_ADDRESS
from devtools.stack.health import wait_until_serving
from devtools.stack.ports import free_port
from devtools.stack.process import (
    child_environment,
    front_command,
    web_command,
    worker_command,
)
from devtools.stack.redis import redis_command

MODEL_NAME = "ham10000"
TOKENS = {f"attack-{client}": f"attack-suite-token-{client}" for client in "abcde"}
"""Throwaway grants (identity name -> token), written to a file under the work directory: five
ordinary clients, each a job owner and a per-client stream cap of its own."""
TOKEN = TOKENS["attack-a"]  # the client most families act as
OPERATOR_TOKEN = "attack-suite-token-operator"  # role=operator: sees every client's jobs
JOBS_ONLY_TOKEN = "attack-suite-token-jobs-only"  # granted dermserve.v1.BatchJobs only
WEB_TOKEN = "attack-suite-token-web"  # the page's: delegate=operators
WEB_OPERATOR_GROUP = "attack-operators"
WEB_HEADER_TIMEOUT_S = 2.0  # the page's header and body idle timeouts here (short: a quick run)
READY_TIMEOUT_S = 180.0  # seconds for TensorFlow to import and a version to answer, 2 slow cores
STOP_TIMEOUT_S = 20.0
PAUSE_TIMEOUT_S = 10.0  # seconds for every thread of a paused process to stop
SCRAPE_TIMEOUT_S = 5.0


@dataclass
class Stack:
    workdir: Path
    pki: Pki
    port: int
    health_port: int
    redis_port: int
    metrics_port: int
    input_root: Path
    web_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def outside(self) -> Path:
        """Files beside the input root that no job may read."""
        return self.workdir / "outside"

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def channel(self, client_cert: bool = True, certificate: tuple[Path, Path] | None = None,
                options: tuple[tuple[str, int], ...] = ()) -> grpc.Channel:
        """A new connection (its own subchannel) with the suite's client certificate, another
        one (`certificate`: cert, key), or none."""
        cert, key = certificate or ((self.pki.client_cert, self.pki.client_key) if client_cert
                                    else (None, None))
        credentials = channel_credentials(self.pki.ca, cert, key)
        return grpc.secure_channel(self.target, credentials,
                                   options=[("grpc.use_local_subchannel_pool", 1), *options])

    def client_certificates(self, count: int) -> list[tuple[Path, Path]]:
        """`count` client certificates with subjects of their own: distinct mutual-TLS clients."""
        return [client_certificate(self.pki, f"attack-client-{i}") for i in range(count)]

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The front's Prometheus samples: (name, sorted labels) -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
            text = answer.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(value for (sample, sample_labels), value in self.metrics().items()
                   if sample == name and labels.items() <= dict(sample_labels).items())

    @contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """`name` stopped (SIGSTOP, every thread seen stopped) for the block: what a slow or
        descheduled worker looks like, made deterministic."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_stopped(pid)
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def crashed(self) -> list[str]:
        return [f"{name} exited with {p.returncode}" for name, p in self.processes.items()
                if p.poll() is not None]

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def export_model(base: Path) -> None:
    """A tiny version 1 (32x32 input, no skill): the attack needs answers, not accuracy."""
    from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, InputSpec, ModelConfig
    from dermserve.trainer.export import export_tiny_version

    config = ModelConfig(labels=tuple(HAM10000_DISPLAY_NAMES),
                         display_names=HAM10000_DISPLAY_NAMES,
                         input=InputSpec(height=32, width=32, reference_pixels=64 * 48),
                         metrics={"balanced_accuracy": 0.1}, description="attack-suite model")
    export_tiny_version(base / MODEL_NAME / "1", config)


def start_stack(workdir: Path) -> Stack:
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    pki = make_pki(workdir / "pki")
    (workdir / "tokens").write_text(tokens_file())
    input_root = workdir / "input"
    input_root.mkdir()
    (workdir / "outside").mkdir()
    models = workdir / "models"
    export_model(models)
    stack = Stack(workdir, pki, free_port(), free_port(), free_port(), free_port(), input_root,
                  free_port())
    try:
        launch(stack, models)
        wait_ready(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def tokens_file() -> str:
    lines = [f"{token} name={name}" for name, token in TOKENS.items()]
    lines.append(f"{OPERATOR_TOKEN} name=attack-operator role=operator")
    lines.append(f"{JOBS_ONLY_TOKEN} dermserve.v1.BatchJobs name=attack-jobs-only")
    lines.append(f"{WEB_TOKEN} name=attack-web delegate=operators")
    return "\n".join(lines) + "\n"


def wait_stopped(pid: int) -> None:
    """Until every thread of `pid` is in the stopped state ('T' in /proc), or raise."""
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.all_threads_stopped(pid):
            return
        time.sleep(0.01)  # polls a condition the kernel sets; no timing is assumed
    raise RuntimeError(f"process {pid} did not stop in {PAUSE_TIMEOUT_S} s")


FRONT_MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576"}
WEB_MALLOC = {"MALLOC_ARENA_MAX": "2"}
"""The front's and the page's malloc settings, as the server and web images set them
(deploy/docker/Dockerfile, which says why): the suite measures what is deployed."""


def launch(stack: Stack, models: Path) -> None:
    w = stack.workdir
    redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
    (w / "redis").mkdir()
    start(stack, "redis", redis_command(stack.redis_port, w / "redis"))
    batch = {"DERMSERVE_REDIS_URL": redis_url, "DERMSERVE_INPUT_ROOTS": str(stack.input_root),
             "DERMSERVE_BATCH_OUTPUT_DIR": str(w / "results")}
    start(stack, "front", front_command(f"127.0.0.1:{stack.port}", models, MODEL_NAME,
                                        "--health-listen", f"127.0.0.1:{stack.health_port}",
                                        "--tls-cert", str(stack.pki.server_cert),
                                        "--tls-key", str(stack.pki.server_key),
                                        "--tls-client-ca", str(stack.pki.ca),
                                        "--auth-tokens-file", str(w / "tokens"),
                                        "--grace-period-s", "2", "--log-format", "json",
                                        metrics_port=stack.metrics_port),
          batch | FRONT_MALLOC)
    start(stack, "worker", worker_command(models, MODEL_NAME), batch)
    start(stack, "web", page_command(stack), {"DERMSERVE_TOKEN": WEB_TOKEN} | WEB_MALLOC)


def page_command(stack: Stack) -> list[str]:
    """The page behind the proxy stand-in, over TLS to the front, with short read timeouts."""
    timeout = str(WEB_HEADER_TIMEOUT_S)
    return web_command(f"127.0.0.1:{stack.web_port}", stack.target,
                       "--tls-ca", str(stack.pki.ca), "--tls-cert", str(stack.pki.client_cert),
                       "--tls-key", str(stack.pki.client_key),
                       "--trusted-proxies", f"{PROXY_ADDRESS}/32",
                       "--operator-group", WEB_OPERATOR_GROUP,
                       "--header-timeout-s", timeout, "--body-idle-timeout-s", timeout)


def start(stack: Stack, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    log = (stack.workdir / f"{name}.log").open("wb")
    stack.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             env=child_environment(env, own_settings=True),
                                             cwd=Path.cwd())


def wait_ready(stack: Stack) -> None:
    """Until the health-only port says SERVING (a version answered a probe image)."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.health_port}") as channel:
        serving = wait_until_serving(channel, READY_TIMEOUT_S, lambda: bool(stack.crashed()),
                                     check_timeout_s=2.0)
    if serving and wait_page_ready(stack):
        return
    if stack.crashed():
        raise RuntimeError(f"the stack died while starting: {stack.crashed()}; "
                           f"logs in {stack.workdir}")
    raise RuntimeError(f"the front or the page did not become ready in {READY_TIMEOUT_S} s")


def wait_page_ready(stack: Stack) -> bool:
    """Until the page's /readyz answers 200 (it reached the front), it died, or the deadline."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stack.crashed():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.web_port}/readyz",
                                        timeout=SCRAPE_TIMEOUT_S) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)  # polls a condition (the page's answer); no timing is assumed
    return False
