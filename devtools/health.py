"""Wait for a starting front to say SERVING: one loop for the stack launcher, the benchmarks and
the attack suite."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc


def wait_until_serving(channel: grpc.Channel, timeout_s: float, died: Callable[[], bool],
                       poll_s: float = 0.25, check_timeout_s: float = 1.0) -> bool:
    """Poll `grpc.health.v1` Check on `channel` until it answers SERVING (True), or until
    `timeout_s` passes or `died()` says the server process is gone (False). A poll of a starting
    process, not a synchronisation: the server has no other way to say it is ready."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and not died():
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=check_timeout_s).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        time.sleep(poll_s)
    return False
