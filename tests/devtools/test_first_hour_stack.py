"""`make run` for a new user (issue 30) and its port checks (issue 26, defect 12), with real
processes: a taken port is named before anything starts; a stranger answering the port is never
announced; the console prefixes every line with its process and hides TensorFlow's CUDA lines;
a crash loop's banner quotes the child's last line; and a whole stack on a tiny model prints its
banner last, then stops on Ctrl-C (or `--stop`, which is `make stop`) within 5 s, every process
gone, ending with one "stopped" line."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dermserve.core.readiness import write_ready_file
from devtools.stack.console import Console
from devtools.stack.launched import LaunchedStack, StackLayout
from devtools.stack.launcher import child_is_up, running
from devtools.stack.ports import free_ports
from devtools.stack.supervisor import Child, CrashLoop, RestartPolicy, Supervisor
from tests.worker.conftest import write_images

START_TIMEOUT_S = 300.0  # seconds: two processes import TensorFlow on two busy cores
IDLE_STOP_S = 5.0  # seconds an idle stack may take to stop (issue 30)
PREFIXES = ("redis  | ", "front  | ", "worker | ", "web    | ", "stack  | ")


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    layout = StackLayout.on_free_ports(tmp_path / "stack", tmp_path / "no-models", [tmp_path])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", layout.grpc_port))
        holder.listen()
        started = time.monotonic()
        launched = subprocess.run(layout.command(), capture_output=True, text=True, timeout=120)
    assert launched.returncode == 1
    assert time.monotonic() - started < 60  # no TensorFlow was loaded to find out
    assert (f"port {layout.grpc_port} (the front's gRPC port, --listen) is taken by another "
            "process") in launched.stdout
    assert not any(line.startswith(("front  |", "worker |", "redis  |"))
                   for line in launched.stdout.splitlines())


def test_a_stranger_on_the_port_is_not_announced(tmp_path: Path) -> None:
    """The banner waits for the ready file of the child this launcher started: a ready file
    from another process (or for another port) does not count."""
    args = argparse.Namespace(var_dir=tmp_path)
    (tmp_path / "run").mkdir()
    child = Child("front", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([child])
    supervisor.start()
    try:
        ready = tmp_path / "run" / "front.ready"
        write_ready_file(ready, 50051)  # this test process: a stranger to the launcher
        assert not child_is_up(supervisor, args, "front", 50051)
        ready.write_text(f'{{"pid": {child.pid}, "port": 50052}}')
        assert not child_is_up(supervisor, args, "front", 50051)  # another port
        ready.write_text(f'{{"pid": {child.pid}, "port": 50051}}')
        assert child_is_up(supervisor, args, "front", 50051)
    finally:
        supervisor.stop(5)


def test_the_console_names_each_process_and_hides_the_cuda_lines() -> None:
    out = io.StringIO()
    console = Console(out)
    console.write("front", "E0000 00:00:1796583907.374688    7776 cuda_platform.cc:52] failed "
                           "call to cuInit: INTERNAL: CUDA error")
    console.write("worker", "I0000 00:00:1796583892.053618    7777 cudart_stub.cc:31] Could "
                            "not find cuda drivers on your machine, GPU will not be used.")
    console.write("front", "WARNING: All log messages before absl::InitializeLog() is called "
                           "are written to STDERR")
    console.write("redis", "7775:M 06 Dec 2026 19:04:46.849 # WARNING Memory overcommit must be "
                           "enabled! Without it, ...")
    console.write("worker", "2026-12-06 INFO worker.runner model ham10000 version 3 ready")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("redis  | the kernel's vm.overcommit_memory is 0")
    assert "Harmless for this local stack" in lines[0]
    assert lines[1] == "worker | 2026-12-06 INFO worker.runner model ham10000 version 3 ready"
    assert len(lines) == 2


def test_a_crash_loop_banner_quotes_the_childs_last_line() -> None:
    child = Child("front", [sys.executable, "-c",
                            "print('cannot listen on 127.0.0.1:50051: the port is taken')\n"
                            "raise SystemExit(2)"])
    now = [0.0]
    supervisor = Supervisor([child], RestartPolicy(initial_delay_s=1.0, crash_limit=2),
                            clock=lambda: now[0], console=Console(io.StringIO()))
    supervisor.start()
    with pytest.raises(CrashLoop) as caught:
        for _ in range(4):  # start, exit, restart, exit: the second exit gives up
            assert child.popen is not None and child.reader is not None
            child.popen.wait(30)
            child.reader.join(30)  # the console has read its last line
            now[0] += 5.0  # past the restart delay
            supervisor.check()
    assert caught.value.last_said == "cannot listen on 127.0.0.1:50051: the port is taken"


@pytest.mark.timeout(2 * START_TIMEOUT_S)
@pytest.mark.parametrize("how", ["ctrl-c", "make stop"])
def test_the_stack_prints_its_banner_last_and_stops_quickly(
        tmp_path: Path, model_base: Path, how: str) -> None:
    input_root = tmp_path / "input"
    write_images(input_root / "clinic", 2)
    layout = StackLayout.on_free_ports(tmp_path / "stack", model_base, [input_root])
    metrics, worker_metrics = free_ports(2)
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log:
        stack = LaunchedStack(layout, log, ["--metrics-port", str(metrics),
                                            "--worker-metrics-port", str(worker_metrics)])
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while "Stop: Ctrl-C" not in log_path.read_text(errors="replace"):
                assert not stack.exited() and time.monotonic() < deadline, "no banner"
                time.sleep(0.5)  # a poll of another process's output: it has no other signal
            pids = [stack.process.pid, *stack.pids().values()]
            started = time.monotonic()
            if how == "ctrl-c":
                os.killpg(stack.process.pid, signal.SIGINT)  # what the terminal sends
            else:
                subprocess.run([sys.executable, "-m", "devtools.stack", "--stop", "--var-dir",
                                str(layout.workdir / "var")], check=True, timeout=120)
            while any(running(pid) for pid in pids) and time.monotonic() - started < 60:
                time.sleep(0.05)
            took = time.monotonic() - started
        finally:
            stack.stop()
    text = log_path.read_text(errors="replace")
    assert took < IDLE_STOP_S, f"stopping took {took:.1f} s"
    assert stack.process.returncode == 0
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1].startswith("stack  | ") and lines[-1].endswith(" stopped")
    assert len([line for line in lines if re.match(r"^stack  \| .* stopped$", line)]) == 1
    assert "killing it" not in text
    assert not re.search(r"cuda|cuInit|oneDNN", text, re.IGNORECASE)
    banner_start = lines.index("dermserve is serving.")
    banner_end = next(i for i, line in enumerate(lines) if line.startswith("Stop: Ctrl-C"))
    banner = "\n".join(lines[banner_start:banner_end + 1])
    assert f"gRPC             {layout.target}" in banner
    assert f"http://127.0.0.1:{metrics}/metrics (front)" in banner
    assert f"http://127.0.0.1:{worker_metrics}/metrics (worker" in banner
    assert f"http://127.0.0.1:{layout.web_port}/" in banner and "`make stop`" in banner
    before_stop = lines[:banner_start] + lines[banner_end + 1:]
    assert all(line.startswith(PREFIXES) for line in before_stop), [
        line for line in before_stop if not line.startswith(PREFIXES)]
    # The banner comes after the worker's start-up, not scrolled away by it.
    stopping = next(i for i, line in enumerate(lines) if line.endswith(" stopping"))
    assert not [line for line in lines[banner_end + 1:stopping] if line.startswith("worker |")]
    assert "[]" not in text
