"""Wait for a starting front to say SERVING: one loop for the stack launcher, the benchmarks and
the attack suite; and, for the benchmarks, until every version it loads is warm."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

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


def versions_to_load(model_base: Path, model_name: str) -> int:
    """How many versions an embedded front will load from `model_base` (the latest N of those
    its scan finds)."""
    from dermserve.core.backends.embedded import DEFAULT_MAX_LOADED_VERSIONS
    from dermserve.core.backends.version_dirs import scan_versions

    return min(len(scan_versions(model_base / model_name) or {}), DEFAULT_MAX_LOADED_VERSIONS)


def wait_until_loaded(channel: grpc.Channel, versions: int, timeout_s: float,
                      died: Callable[[], bool], poll_s: float = 0.25) -> bool:
    """Poll ListModels until `versions` versions are AVAILABLE and none is still loading (True),
    or until `timeout_s` passes or `died()` (False). A front says SERVING as soon as its latest
    version answers, while older ones load and warm up beside it: a benchmark step measured then
    shares the cores with that warm-up."""
    from dermserve.v1 import lesion_classifier_pb2 as pb
    from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

    stub = pb_grpc.LesionClassifierStub(channel)
    loading = (pb.MODEL_VERSION_STATE_START, pb.MODEL_VERSION_STATE_LOADING)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and not died():
        try:
            states = [v.state for v in stub.ListModels(pb.ListModelsRequest(),
                                                      timeout=poll_s * 4).versions]
            available = states.count(pb.MODEL_VERSION_STATE_AVAILABLE)
            if available >= versions and not any(state in loading for state in states):
                return True
        except grpc.RpcError:
            pass
        time.sleep(poll_s)
    return False


def wait_until_ready(channel: grpc.Channel, model_base: Path, model_name: str, timeout_s: float,
                     died: Callable[[], bool]) -> bool:
    """SERVING, and every version the front loads from `model_base` AVAILABLE: what a benchmark
    waits for before its first step."""
    return (wait_until_serving(channel, timeout_s, died)
            and wait_until_loaded(channel, versions_to_load(model_base, model_name), timeout_s,
                                  died))
