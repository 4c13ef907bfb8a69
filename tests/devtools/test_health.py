"""The benchmarks' readiness waits (devtools/stack/health.py) against a real front on tiny
versions."""

from __future__ import annotations

from pathlib import Path

from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.v1 import lesion_classifier_pb2 as pb
from devtools.stack.health import versions_to_load, wait_until_loaded, wait_until_serving
from tests.conftest import TINY_MODEL_NAME, export_tiny
from tests.service.conftest import running_server


def test_a_benchmark_waits_until_every_version_the_front_loads_answers(model_base: Path) -> None:
    backend = EmbeddedBackend(model_base, TINY_MODEL_NAME, poll_interval_s=3600.0)
    backend.start(block=False)  # as the front: SERVING once the latest answers, the rest after
    try:
        with running_server(backend) as running:
            assert versions_to_load(model_base, TINY_MODEL_NAME) == 2
            assert wait_until_serving(running.channel, 60.0, lambda: False)
            assert wait_until_loaded(running.channel, 2, 60.0, lambda: False)
            states = [version.state for version in
                      running.stub.ListModels(pb.ListModelsRequest()).versions]
            assert states == [pb.MODEL_VERSION_STATE_AVAILABLE] * 2
            assert not wait_until_loaded(running.channel, 3, 0.5, lambda: False)
    finally:
        backend.close()


def test_the_front_loads_at_most_its_latest_two_versions(model_base: Path) -> None:
    export_tiny(model_base, 3)
    assert versions_to_load(model_base, TINY_MODEL_NAME) == 2
