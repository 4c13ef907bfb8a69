"""`make run`: start the local stack (the front service, plus the redis-server and the batch
worker that worker/stack.py describes), print how to call it, and stop every process on Ctrl-C or
SIGTERM. worker.stack builds on this module's Process, so it is imported inside the functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc

from core import defaults as core_defaults
from service import defaults

log = logging.getLogger("dermserve.stack")

STOP_TIMEOUT_S = 25.0  # seconds: the front's grace period (20 s) plus a margin
READY_TIMEOUT_S = 180.0  # seconds for the front to report SERVING (TF import + model load)
POLL_S = 0.5  # seconds between checks on the children


@dataclass
class Process:
    """One child of the stack."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("starting %s: %s", self.name, " ".join(self.command))
        self.popen = subprocess.Popen(self.command, env={**os.environ, **self.env})

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()

    def wait(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.popen.kill()
            self.popen.wait()


def has_versions(model_dir: Path) -> bool:
    return model_dir.is_dir() and any(p.name.isdigit() and (p / "saved_model.pb").exists()
                                      for p in model_dir.iterdir())


def choose_model_base(args: argparse.Namespace) -> Path:
    """The released model base; the demo placeholder, loudly, when it has no version yet."""
    if has_versions(args.model_base / args.model_name):
        return Path(args.model_base)
    banner = "!" * 78
    log.warning("\n%s\n!! %s has no released model version: serving the UNTRAINED PLACEHOLDER"
                "\n!! from %s. Its predictions are meaningless.\n%s", banner,
                args.model_base / args.model_name, args.demo_base, banner)
    return Path(args.demo_base)


def front_process(args: argparse.Namespace, model_base: Path) -> Process:
    from worker.stack import batch_environment

    # The front hosts BatchJobs, so it shares the worker's Redis, input roots and output dir.
    return Process("front", [sys.executable, "-m", "service", "--listen", args.listen,
                             "--model-base", str(model_base), "--model-name", args.model_name,
                             "--backend", "embedded"], env=batch_environment())


def extra_processes(args: argparse.Namespace) -> list[Process]:
    from worker.stack import stack_processes

    return stack_processes(args)


def wait_until_serving(target: str, processes: Sequence[Process]) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    until = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until and not any_exited(processes):
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(POLL_S)
    return False


def any_exited(processes: Sequence[Process]) -> bool:
    return any(p.popen is not None and p.popen.poll() is not None for p in processes)


def print_usage(target: str) -> None:
    print(f"""
dermserve is serving on {target}. Try:

  .venv/bin/dermserve classify --target {target} path/to/lesion.jpg
  .venv/bin/dermserve classify --target {target} --json ../shared/data/ham10000/images/<image>.jpg
  .venv/bin/dermserve models --target {target}
  grpcurl -plaintext {target} list
  grpcurl -plaintext -d "{{\\"image\\": \\"$(base64 -w0 lesion.jpg)\\"}}" \\
      {target} dermserve.v1.LesionClassifier/Classify

Metrics: http://127.0.0.1:{defaults.DEFAULT_METRICS_PORT}/metrics   Stop: Ctrl-C
""", flush=True)


def run(processes: list[Process], target: str) -> int:
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    for process in processes:
        process.start()
    if wait_until_serving(target, processes):
        print_usage(target)
    while not stopping and not any_exited(processes):
        time.sleep(POLL_S)
    status = 0 if stopping else 1
    if not stopping:
        log.error("a process of the stack exited; stopping the others")
    for process in processes:
        process.stop()
    for process in processes:
        process.wait(STOP_TIMEOUT_S)
    return status


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.stack", description=__doc__)
    parser.add_argument("--model-base", type=Path, default=Path(core_defaults.DEFAULT_MODEL_BASE))
    parser.add_argument("--demo-base", type=Path, default=Path("var/demo-models"))
    parser.add_argument("--model-name", default=core_defaults.DEFAULT_MODEL_NAME)
    parser.add_argument("--listen", default=defaults.DEFAULT_LISTEN_ADDRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stack %(message)s")
    processes = [front_process(args, choose_model_base(args)), *extra_processes(args)]
    sys.exit(run(processes, args.listen))


if __name__ == "__main__":
    main()
