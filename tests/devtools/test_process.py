"""`python -m dermserve.service` as a process: flags and environment, the metrics endpoint, JSON
logs, and a graceful exit on SIGTERM. An empty model base keeps TensorFlow out of it (fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.stack.ports import free_ports
from tests.service.conftest import wait_until

START_TIMEOUT_S = 30.0  # seconds; the interpreter and grpc import on two busy cores


def health(port: int) -> int | None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1).status)
        except grpc.RpcError:
            return None


def test_server_process_reports_health_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    grpc_port, metrics_port = free_ports(2)
    env = {**os.environ, "DERMSERVE_LOG_FORMAT": "json",
           "DERMSERVE_METRICS_PORT": str(metrics_port), "DERMSERVE_HEALTH_INTERVAL_S": "0.2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dermserve.service", "--listen", f"127.0.0.1:{grpc_port}",
         "--model-base", str(tmp_path / "empty"), "--grace-period-s", "2"],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: health(grpc_port) is not None, START_TIMEOUT_S)
        assert health(grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING  # no model
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        assert "dermserve_serving 0.0" in text
        # Health probes are not clients' calls: they stay out of the request counts.
        assert "dermserve_requests_total{" not in text and 'method="Check"' not in text
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert time.monotonic() - started < 10
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("dermserve listening") for m in messages)
    assert messages[-1] == "stopped"
    assert all("request_id" in entry for entry in entries)


def test_a_taken_port_ends_the_front_before_the_model_loads(model_base: Path) -> None:
    """The port is bound before TensorFlow and the model load (issue 26, defect 12): a taken
    one ends the front with one line naming the cause, exit 2, and no model loading logged."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "dermserve.service", "--listen", f"127.0.0.1:{port}",
             "--metrics-port", "0", "--model-base", str(model_base), "--model-name", "ham10000"],
            capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is taken" in process.stderr
    assert "Traceback" not in process.stderr
    assert "loading ham10000" not in process.stderr and "tensorflow" not in process.stderr.lower()
