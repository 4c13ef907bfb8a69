"""`make run`: start the local stack, print how to call it, and stop every process on Ctrl-C or
SIGTERM. The stack is a redis-server on loopback with its data under var/redis (AOF on, so a
restart keeps the jobs), the front service hosting Classify and BatchJobs, one batch worker, and
the clinicians' web page (dermserve-web) on 127.0.0.1:8080, a client of the front.

The front must see the same Redis, input roots and output directory as the worker: both get
`batch_environment()`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc

from core import defaults as core_defaults
from devtools.health import wait_until_serving
from devtools.redis import redis_command
from service import defaults
from web import defaults as web_defaults

log = logging.getLogger("dermserve.stack")

STACK_REDIS_PORT = 6390  # TCP port on loopback; not 6379, where a system Redis may already run
STACK_REDIS_DIR = Path("var/redis")  # the AOF lives here, next to the other local state
STACK_OUTPUT_DIR = Path("var/batch")
STACK_INPUT_ROOTS = (Path("../shared/data/ham10000"), Path("var/batch-input"))
"""Folders `dermserve batch submit` may reference in the local stack: the HAM10000 data and a
drop folder for anything else."""
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


def batch_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """DERMSERVE_* settings the front and the worker share; the caller's own values win."""
    roots = os.pathsep.join(str(root.resolve()) for root in STACK_INPUT_ROOTS)
    wanted = {"DERMSERVE_REDIS_URL": f"redis://127.0.0.1:{STACK_REDIS_PORT}/0",
              "DERMSERVE_INPUT_ROOTS": roots,
              "DERMSERVE_BATCH_OUTPUT_DIR": str(STACK_OUTPUT_DIR.resolve())}
    return {name: environ.get(name, value) for name, value in wanted.items()}


def redis_process() -> Process:
    STACK_REDIS_DIR.mkdir(parents=True, exist_ok=True)
    Path("var/batch-input").mkdir(parents=True, exist_ok=True)
    return Process("redis", redis_command(STACK_REDIS_PORT, STACK_REDIS_DIR.resolve()))


def front_process(args: argparse.Namespace, model_base: Path) -> Process:
    # The front hosts BatchJobs, so it shares the worker's Redis, input roots and output dir.
    return Process("front", [sys.executable, "-m", "service", "--listen", args.listen,
                             "--model-base", str(model_base), "--model-name", args.model_name,
                             "--backend", "embedded"], env=batch_environment())


def worker_process(args: argparse.Namespace, model_base: Path) -> Process:
    return Process("worker", [sys.executable, "-m", "worker", "--model-base", str(model_base),
                              "--model-name", args.model_name], env=batch_environment())


def web_process(args: argparse.Namespace) -> Process:
    # The page is a client of the front; it answers (not ready) until the front is SERVING.
    return Process("web", [sys.executable, "-m", "web", "--web-listen", args.web_listen,
                           "--target", args.listen])


def stack_processes(args: argparse.Namespace) -> list[Process]:
    """Redis first: the Redis clients of the front and the worker retry until it answers."""
    model_base = choose_model_base(args)
    return [redis_process(), front_process(args, model_base), worker_process(args, model_base),
            web_process(args)]


def front_serving(target: str, processes: Sequence[Process]) -> bool:
    with grpc.insecure_channel(target) as channel:
        return wait_until_serving(channel, READY_TIMEOUT_S, lambda: any_exited(processes),
                                  poll_s=POLL_S)


def any_exited(processes: Sequence[Process]) -> bool:
    return any(p.popen is not None and p.popen.poll() is not None for p in processes)


def print_usage(target: str, web_listen: str) -> None:
    print(f"""
dermserve is serving on {target}. Try:

  .venv/bin/dermserve classify --target {target} path/to/lesion.jpg
  .venv/bin/dermserve classify --target {target} --json ../shared/data/ham10000/images/<image>.jpg
  .venv/bin/dermserve models --target {target}
  grpcurl -plaintext {target} list
  grpcurl -plaintext -d "{{\\"image\\": \\"$(base64 -w0 lesion.jpg)\\"}}" \\
      {target} dermserve.v1.LesionClassifier/Classify

The web page: http://{web_listen}/
Metrics: http://127.0.0.1:{defaults.DEFAULT_METRICS_PORT}/metrics   Stop: Ctrl-C
""", flush=True)


def run(processes: list[Process], target: str, web_listen: str) -> int:
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    for process in processes:
        process.start()
    if front_serving(target, processes):
        print_usage(target, web_listen)
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
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__)
    parser.add_argument("--model-base", type=Path, default=Path(core_defaults.DEFAULT_MODEL_BASE))
    parser.add_argument("--demo-base", type=Path, default=Path("var/demo-models"))
    parser.add_argument("--model-name", default=core_defaults.DEFAULT_MODEL_NAME)
    parser.add_argument("--listen", default=defaults.DEFAULT_LISTEN_ADDRESS)
    parser.add_argument("--web-listen", default=web_defaults.DEFAULT_WEB_LISTEN_ADDRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stack %(message)s")
    sys.exit(run(stack_processes(args), args.listen, args.web_listen))


if __name__ == "__main__":
    main()
