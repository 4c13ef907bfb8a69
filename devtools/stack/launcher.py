"""`make run`: start the local stack, print how to call it, keep it serving, and stop every process
on Ctrl-C or SIGTERM. The stack is a redis-server on loopback with its data under var/redis (AOF
on, so a restart keeps the jobs), the front service hosting Classify and BatchJobs, one batch
worker, and the clinicians' web page (dermserve-web, on 127.0.0.1:8080), a client of the front.

The children run under devtools/stack/supervisor.py: one that dies (SIGKILL, the OOM killer, a
crash) is logged and restarted with backoff while the others keep serving; the front's clients and
the worker reconnect by themselves. A child that keeps dying makes the launcher give up loudly: it
stops the rest and exits 1 naming the child and its exit codes.

Before anything starts, every port the stack needs is tried: one that another process holds ends
the launch at once, naming the port and the flag that moves it. The front binds its port before
it loads TensorFlow, and the banner is printed only once the front and the worker that this
launcher started say they are up in their ready files (pid and port, dermserve/core/readiness.py):
another process answering the port is never announced. Ctrl-C (or `make stop` from another terminal,
through the pid file <var-dir>/run/stack.pid) stops the children in order and ends with one
"stopped" line.

The front must see the same Redis, input roots and output directory as the worker: both get
`batch_environment()`. Ports and directories are flags, so tests and the soak (devtools/soak/run.py)
run their own stack next to a developer's.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

import grpc

from dermserve.core import defaults as core_defaults
from dermserve.core.readiness import read_ready_file
from dermserve.service import defaults
from dermserve.web import defaults as web_defaults
from dermserve.worker import defaults as worker_defaults
from devtools import proc
from devtools.stack.console import Console, PrefixFormatter
from devtools.stack.health import wait_until_serving
from devtools.stack.process import (
    WORKER_MODULE,
    front_command,
    web_command,
    worker_command,
)
from devtools.stack.redis import redis_command
from devtools.stack.supervisor import STOP_TIMEOUT_S, Child, CrashLoop, RestartPolicy, Supervisor

log = logging.getLogger("dermserve.stack")

STACK_REDIS_PORT = 6390  # TCP port on loopback; not 6379, where a system Redis may already run
STACK_VAR_DIR = Path("var")
"""Local state: redis/ (the AOF), batch/ (job outputs) and batch-input/ (a drop folder)."""
STACK_DATA_ROOT = Path("../shared/data/ham10000")
"""Input root `dermserve batch submit` may reference besides the drop folder: the HAM10000 data."""
READY_TIMEOUT_S = 180.0  # seconds for the front to report SERVING (TF import + model load)
POLL_S = 0.5  # seconds between looks at the children
STOP_WAIT_S = 2 * STOP_TIMEOUT_S + 10.0
"""Seconds `--stop` waits for the launcher to end: its children's stop, then their SIGKILL."""


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
    # Warnings only: Redis's start-up notices say nothing a user of the stack needs.
    return Child("redis", [*redis_command(args.redis_port, directory.resolve()),
                           "--loglevel", "warning"], last=True)


def run_dir(args: argparse.Namespace) -> Path:
    """<var-dir>/run: the launcher's pid file and its children's ready files."""
    return Path(args.var_dir) / "run"


def ready_file(args: argparse.Namespace, name: str) -> Path:
    return run_dir(args) / f"{name}.ready"


def front_child(args: argparse.Namespace, model_base: Path) -> Child:
    # The front hosts BatchJobs, so it shares the worker's Redis, input roots and output dir.
    return Child("front", front_command(args.listen, model_base, args.model_name,
                                        "--ready-file", str(ready_file(args, "front")),
                                        metrics_port=args.metrics_port),
                 env=batch_environment(args))


def worker_child(args: argparse.Namespace, model_base: Path) -> Child:
    return Child("worker", worker_command(model_base, args.model_name,
                                          "--ready-file", str(ready_file(args, "worker")),
                                          metrics_port=args.worker_metrics_port,
                                          module=args.worker_module),
                 env=batch_environment(args))


def web_child(args: argparse.Namespace) -> Child:
    # The page is a client of the front; it answers (not ready) until the front is SERVING.
    return Child("web", web_command(args.web_listen, args.listen))


def stack_children(args: argparse.Namespace) -> list[Child]:
    """Redis first: the Redis clients of the front and the worker retry until it answers."""
    model_base = choose_model_base(args)
    children = [redis_child(args), front_child(args, model_base), worker_child(args, model_base)]
    return children + ([web_child(args)] if args.web_listen else [])


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(initial_delay_s=args.restart_delay_s,
                         max_delay_s=args.max_restart_delay_s,
                         crash_window_s=args.crash_window_s, crash_limit=args.crash_limit)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def wanted_ports(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(host, port, what it is and the flag that moves it) for every port the stack binds."""
    ports = [(host_of(args.listen), port_of(args.listen), "the front's gRPC port, --listen"),
             ("127.0.0.1", args.metrics_port, "the front's metrics port, --metrics-port"),
             ("127.0.0.1", args.worker_metrics_port,
              "the worker's metrics port, --worker-metrics-port"),
             ("127.0.0.1", args.redis_port, "Redis, --redis-port")]
    if args.web_listen:
        ports.append((host_of(args.web_listen), port_of(args.web_listen),
                      "the web page, --web-listen"))
    return [entry for entry in ports if entry[1] != 0]


def taken_ports(args: argparse.Namespace) -> list[str]:
    """One line per port another process holds (tried with a bind, as the children will)."""
    taken = []
    for host, port, what in wanted_ports(args):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the children bind: SO_REUSEADDR, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                taken.append(f"port {port} ({what}) is taken by another process")
    return taken


def child_is_up(supervisor: Supervisor, args: argparse.Namespace, name: str,
                port: int) -> bool:
    """Whether the child `name` this launcher started wrote its ready file: its pid, and the
    port it was asked to bind (any, when asked for port 0)."""
    ready = read_ready_file(ready_file(args, name))
    return bool(ready) and ready["pid"] == supervisor.child(name).pid and (
        port == 0 or ready["port"] == port)


def wait_for(condition: Callable[[], bool], until: float, stopping: threading.Event) -> bool:
    """Poll `condition` until it holds (True), `until` passes or the stack stops (False): the
    children have no other way to say they are up."""
    while not stopping.is_set() and time.monotonic() < until:
        if condition():
            return True
        stopping.wait(POLL_S)
    return False


def announce_when_serving(supervisor: Supervisor, args: argparse.Namespace,
                          stopping: threading.Event) -> None:
    """Print how to call the stack once the front this launcher started says SERVING, and the
    worker is up (a thread, so the supervisor keeps restarting children while they load)."""
    until = time.monotonic() + READY_TIMEOUT_S
    if not wait_for(lambda: child_is_up(supervisor, args, "front", port_of(args.listen)),
                    until, stopping):
        return
    with grpc.insecure_channel(args.listen) as channel:
        if not wait_until_serving(channel, max(until - time.monotonic(), 1.0), stopping.is_set,
                                  poll_s=POLL_S):
            return
    worker_up = wait_for(lambda: child_is_up(supervisor, args, "worker",
                                             args.worker_metrics_port), until, stopping)
    if not stopping.is_set():
        print_usage(args, worker_up)


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics" if port else "off"


def print_usage(args: argparse.Namespace, worker_up: bool = True) -> None:
    target = args.listen
    worker = "" if worker_up else "  (the batch worker is still starting)"
    web_line = f"  web page         http://{args.web_listen}/\n" if args.web_listen else ""
    metrics = (f"  metrics          {metrics_url(args.metrics_port)} (front), "
               f"{metrics_url(args.worker_metrics_port)} (worker, batch jobs)\n")
    print(f"""
dermserve is serving.
  gRPC             {target}{worker}
{web_line}{metrics}
  .venv/bin/dermserve classify --target {target} ../shared/data/ham10000/images/<image>.jpg
  .venv/bin/dermserve batch submit --target {target} var/batch-input/
  .venv/bin/dermserve models --target {target}
  .tools/bin/grpcurl -plaintext {target} list

Stop: Ctrl-C here, or `make stop` from another terminal.
""", flush=True)


def supervise(supervisor: Supervisor, stopping: threading.Event) -> int:
    """Restart children that exit until told to stop (0) or one crash-loops (1)."""
    status = 0
    try:
        while not stopping.wait(POLL_S):
            supervisor.check()
    except CrashLoop as crash:
        banner = "!" * 78
        cause = f"\n!! its last words: {crash.last_said}" if crash.last_said else ""
        log.error("\n%s\n!! giving up: %s.%s\n!! Stopping the stack.\n%s",
                  banner, crash, cause, banner)
        status = 1
    log.info("stopping")
    supervisor.stop()
    return status


def run(supervisor: Supervisor, args: argparse.Namespace) -> int:
    stopping = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    supervisor.start()
    threading.Thread(target=announce_when_serving, name="announce", daemon=True,
                     args=(supervisor, args, stopping)).start()
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
    parser.add_argument("--worker-module", default=WORKER_MODULE,
                        help="the worker's module (a test's entry: tests.worker.hold)")
    parser.add_argument("--restart-delay-s", type=float, default=policy.initial_delay_s,
                        help="seconds before restarting a child that exited (doubles per exit)")
    parser.add_argument("--max-restart-delay-s", type=float, default=policy.max_delay_s)
    parser.add_argument("--crash-window-s", type=float, default=policy.crash_window_s,
                        help="seconds over which a child's exits are counted")
    parser.add_argument("--crash-limit", type=int, default=policy.crash_limit,
                        help="exits of one child within the window before giving up")
    parser.add_argument("--verbose", action="store_true",
                        help="also show what the console hides (CUDA lines, rq's start-up)")
    parser.add_argument("--stop", action="store_true",
                        help="stop the stack running from --var-dir (`make stop`) and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.verbose)
    if args.stop:
        sys.exit(stop_running(args))
    sys.exit(launch(args))


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(PrefixFormatter())
    stack_log = logging.getLogger("dermserve.stack")
    stack_log.handlers[:] = [handler]
    stack_log.propagate = False
    stack_log.setLevel(logging.DEBUG if verbose else logging.INFO)


def launch(args: argparse.Namespace) -> int:
    """Check the ports and the pid file, run the stack until told to stop, say "stopped"."""
    problems = taken_ports(args)
    running = running_pid(args)
    if running is not None:
        problems.insert(0, f"a stack is already running from {args.var_dir} (pid {running}); "
                           "`make stop` ends it")
    if problems:
        log.error("cannot start: %s.", "; ".join(problems))
        return 1
    run_dir(args).mkdir(parents=True, exist_ok=True)
    for name in ("front", "worker"):
        ready_file(args, name).unlink(missing_ok=True)
    pid_file(args).write_text(str(os.getpid()), encoding="utf-8")
    try:
        supervisor = Supervisor(stack_children(args), restart_policy(args), args.pids_file,
                                console=Console())
        status = run(supervisor, args)
    finally:
        pid_file(args).unlink(missing_ok=True)
    log.info("stopped")
    return status


def pid_file(args: argparse.Namespace) -> Path:
    return run_dir(args) / "stack.pid"


def running_pid(args: argparse.Namespace) -> int | None:
    """The pid of the launcher running from this var dir, if its pid file names a live one."""
    try:
        pid = int(pid_file(args).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return pid if "devtools.stack" in (proc.command_line(pid) or []) else None


def running(pid: int) -> bool:
    """Whether `pid` is a live process: an exited one its parent has not reaped yet (a zombie)
    has stopped too."""
    return proc.is_running(pid)


def stop_running(args: argparse.Namespace) -> int:
    """`make stop`: SIGTERM the running launcher and wait until it has stopped everything."""
    pid = running_pid(args)
    if pid is None:
        log.info("no stack is running from %s", args.var_dir)
        return 0
    os.kill(pid, signal.SIGTERM)
    until = time.monotonic() + STOP_WAIT_S
    while running(pid) and time.monotonic() < until:
        time.sleep(POLL_S)  # not our child: nothing to wait() on
    if running(pid):
        log.error("the stack (pid %d) did not stop within %.0f s", pid, STOP_WAIT_S)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    main()
