"""`make run`: start the local stack, print how to call it, keep it serving, and stop every process
on Ctrl-C or SIGTERM. The stack is a redis-server on loopback with its data under var/redis (AOF
on, so a restart keeps the jobs), the front service hosting Classify and BatchJobs, one batch
worker, and the clinicians' web page (dermserve-web, on 127.0.0.1:8080), a client of the front.

The children run under devtools/supervisor.py: one that dies (SIGKILL, the OOM killer, a crash)
is logged and restarted with backoff while the others keep serving; the front's clients and the
worker reconnect by themselves. A child that keeps dying makes the launcher give up loudly: it
stops the rest and exits 1 naming the child and its exit codes.

The front must see the same Redis, input roots and output directory as the worker: both get
`batch_environment()`. Ports and directories are flags, so tests and the soak (devtools/soak.py)
run their own stack next to a developer's.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import grpc

from core import defaults as core_defaults
from devtools.health import wait_until_serving
from devtools.redis import redis_command
from devtools.supervisor import Child, CrashLoop, RestartPolicy, Supervisor
from service import defaults
from web import defaults as web_defaults
from worker import defaults as worker_defaults

log = logging.getLogger("dermserve.stack")

STACK_REDIS_PORT = 6390  # TCP port on loopback; not 6379, where a system Redis may already run
STACK_VAR_DIR = Path("var")
"""Local state: redis/ (the AOF), batch/ (job outputs) and batch-input/ (a drop folder)."""
STACK_DATA_ROOT = Path("../shared/data/ham10000")
"""Input root `dermserve batch submit` may reference besides the drop folder: the HAM10000 data."""
READY_TIMEOUT_S = 180.0  # seconds for the front to report SERVING (TF import + model load)
POLL_S = 0.5  # seconds between looks at the children


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


def input_roots(args: argparse.Namespace) -> list[Path]:
    """--input-root folders, else the HAM10000 data and the drop folder under --var-dir."""
    return list(args.input_root) or [STACK_DATA_ROOT, args.var_dir / "batch-input"]


def batch_environment(args: argparse.Namespace,
                      environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """DERMSERVE_* settings the front and the worker share; the caller's own values win."""
    roots = os.pathsep.join(str(root.resolve()) for root in input_roots(args))
    wanted = {"DERMSERVE_REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
              "DERMSERVE_INPUT_ROOTS": roots,
              "DERMSERVE_BATCH_OUTPUT_DIR": str((args.var_dir / "batch").resolve())}
    return {name: environ.get(name, value) for name, value in wanted.items()}


def redis_child(args: argparse.Namespace) -> Child:
    directory = args.var_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    (args.var_dir / "batch-input").mkdir(parents=True, exist_ok=True)
    return Child("redis", redis_command(args.redis_port, directory.resolve()))


def front_child(args: argparse.Namespace, model_base: Path) -> Child:
    # The front hosts BatchJobs, so it shares the worker's Redis, input roots and output dir.
    return Child("front", [sys.executable, "-m", "service", "--listen", args.listen,
                           "--metrics-port", str(args.metrics_port),
                           "--model-base", str(model_base), "--model-name", args.model_name,
                           "--backend", "embedded"], env=batch_environment(args))


def worker_child(args: argparse.Namespace, model_base: Path) -> Child:
    return Child("worker", [sys.executable, "-m", "worker", "--model-base", str(model_base),
                            "--model-name", args.model_name,
                            "--worker-metrics-port", str(args.worker_metrics_port)],
                 env=batch_environment(args))


def web_child(args: argparse.Namespace) -> Child:
    # The page is a client of the front; it answers (not ready) until the front is SERVING.
    return Child("web", [sys.executable, "-m", "web", "--web-listen", args.web_listen,
                         "--target", args.listen])


def stack_children(args: argparse.Namespace) -> list[Child]:
    """Redis first: the Redis clients of the front and the worker retry until it answers."""
    model_base = choose_model_base(args)
    children = [redis_child(args), front_child(args, model_base), worker_child(args, model_base)]
    return children + ([web_child(args)] if args.web_listen else [])


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(initial_delay_s=args.restart_delay_s,
                         max_delay_s=args.max_restart_delay_s,
                         crash_window_s=args.crash_window_s, crash_limit=args.crash_limit)


def announce_when_serving(target: str, metrics_port: int, web_listen: str,
                          stopping: threading.Event) -> None:
    """Print how to call the stack once the front first says SERVING (a thread, so the
    supervisor keeps restarting children while the front loads)."""
    with grpc.insecure_channel(target) as channel:
        if wait_until_serving(channel, READY_TIMEOUT_S, stopping.is_set, poll_s=POLL_S):
            print_usage(target, metrics_port, web_listen)


def print_usage(target: str, metrics_port: int, web_listen: str) -> None:
    web_line = f"The web page: http://{web_listen}/\n" if web_listen else ""
    print(f"""
dermserve is serving on {target}. Try:

  .venv/bin/dermserve classify --target {target} path/to/lesion.jpg
  .venv/bin/dermserve classify --target {target} --json ../shared/data/ham10000/images/<image>.jpg
  .venv/bin/dermserve models --target {target}
  grpcurl -plaintext {target} list
  grpcurl -plaintext -d "{{\\"image\\": \\"$(base64 -w0 lesion.jpg)\\"}}" \\
      {target} dermserve.v1.LesionClassifier/Classify

{web_line}Metrics: http://127.0.0.1:{metrics_port}/metrics   Stop: Ctrl-C
""", flush=True)


def supervise(supervisor: Supervisor, stopping: threading.Event) -> int:
    """Restart children that exit until told to stop (0) or one crash-loops (1)."""
    status = 0
    try:
        while not stopping.wait(POLL_S):
            supervisor.check()
    except CrashLoop as crash:
        banner = "!" * 78
        log.error("\n%s\n!! giving up: %s.\n!! Stopping the stack; see %s's log above.\n%s",
                  banner, crash, crash.name, banner)
        status = 1
    supervisor.stop()
    return status


def run(supervisor: Supervisor, target: str, metrics_port: int, web_listen: str) -> int:
    stopping = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    supervisor.start()
    threading.Thread(target=announce_when_serving, name="announce", daemon=True,
                     args=(target, metrics_port, web_listen, stopping)).start()
    return supervise(supervisor, stopping)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    policy = RestartPolicy()
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, default=Path(core_defaults.DEFAULT_MODEL_BASE))
    parser.add_argument("--demo-base", type=Path, default=Path("var/demo-models"))
    parser.add_argument("--model-name", default=core_defaults.DEFAULT_MODEL_NAME)
    parser.add_argument("--listen", default=defaults.DEFAULT_LISTEN_ADDRESS)
    parser.add_argument("--metrics-port", type=int, default=defaults.DEFAULT_METRICS_PORT,
                        help="the front's Prometheus port (0: off)")
    parser.add_argument("--worker-metrics-port", type=int,
                        default=worker_defaults.DEFAULT_WORKER_METRICS_PORT,
                        help="the worker's Prometheus port (0: off)")
    parser.add_argument("--redis-port", type=int, default=STACK_REDIS_PORT)
    parser.add_argument("--web-listen", default=web_defaults.DEFAULT_WEB_LISTEN_ADDRESS,
                        help="the web page's address (empty: no web page)")
    parser.add_argument("--var-dir", type=Path, default=STACK_VAR_DIR,
                        help="local state: redis/, batch/ and batch-input/")
    parser.add_argument("--input-root", type=Path, action="append", default=[],
                        help="a folder jobs may reference (repeatable; default: the HAM10000 "
                             "data and <var-dir>/batch-input)")
    parser.add_argument("--pids-file", type=Path,
                        help="keep {child: pid} of the running children in this JSON file")
    parser.add_argument("--restart-delay-s", type=float, default=policy.initial_delay_s,
                        help="seconds before restarting a child that exited (doubles per exit)")
    parser.add_argument("--max-restart-delay-s", type=float, default=policy.max_delay_s)
    parser.add_argument("--crash-window-s", type=float, default=policy.crash_window_s,
                        help="seconds over which a child's exits are counted")
    parser.add_argument("--crash-limit", type=int, default=policy.crash_limit,
                        help="exits of one child within the window before giving up")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stack %(message)s")
    supervisor = Supervisor(stack_children(args), restart_policy(args), args.pids_file)
    sys.exit(run(supervisor, args.listen, args.metrics_port, args.web_listen))


if __name__ == "__main__":
    main()
