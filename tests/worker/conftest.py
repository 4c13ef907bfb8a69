"""Fixtures of the batch worker tests: a real redis-server per test on a free loopback port
(AOF on, so a restart keeps the data), an input root with generated images, settings with short
leases, and a small fake model backend for the tests that do not need TensorFlow."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermserve.batch.jobs import JobService
from dermserve.core.backends.base import BatchOutput, ModelRef, VersionInfo, VersionState
from dermserve.core.errors import ModelNotFound
from dermserve.worker.runner import WorkerProcess, build_classifier
from dermserve.worker.settings import WorkerSettings
from devtools.stack.redis import RedisServer
from tests.conftest import TINY_MODEL_NAME, tiny_config

DEADLINE_S = 60.0  # seconds any wait in these tests may take before it fails


def wait_until(condition: Callable[[], object], what: str,
               timeout_s: float = DEADLINE_S, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, fsync_always=True).start()
    yield server
    server.stop()


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_images(directory: Path, count: int, distinct: int = 8) -> list[Path]:
    """`count` small JPEGs (copies of `distinct` random ones) named img_0000.jpg, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    samples = [jpeg_bytes(seed) for seed in range(distinct)]
    paths = []
    for index in range(count):
        path = directory / f"img_{index:04d}.jpg"
        path.write_bytes(samples[index % distinct])
        paths.append(path)
    return paths


@pytest.fixture
def input_root(tmp_path: Path) -> Path:
    root = tmp_path / "input"
    root.mkdir()
    return root


@pytest.fixture
def settings(redis_server: RedisServer, input_root: Path, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server.url, input_roots=(input_root,),
        batch_output_dir=tmp_path / "output", chunk_size=4, images_per_call=2,
        max_images_per_job=50, max_inline_images=5, max_inline_bytes=200_000,
        lease_ttl_s=2.0, reap_interval_s=0.3, reap_grace_s=0.0, backend_retries=3,
        backoff_base_s=0.01, backoff_cap_s=0.05, watch_interval_s=0.05,
        model_name=TINY_MODEL_NAME, worker_metrics_port=0, burst=True)


@pytest.fixture
def jobs(settings: WorkerSettings) -> Iterator[JobService]:
    service = JobService.from_settings(settings)
    yield service
    service.close()


class FakeBackend:
    """A Backend without TensorFlow: version 1 of the tiny model, uniform-ish probabilities.
    `on_predict(call_number)` runs before each predict (to fail, cancel or count)."""

    def __init__(self, on_predict: Callable[[int], None] | None = None,
                 versions: Sequence[int] = (1,)) -> None:
        self.on_predict = on_predict
        self.versions = tuple(versions)
        self.calls = 0
        self.images = 0
        self.config = tiny_config()

    def _info(self, version: int) -> VersionInfo:
        return VersionInfo(TINY_MODEL_NAME, version, VersionState.AVAILABLE, self.config)

    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        version = ref.version if ref.version is not None else max(self.versions)
        if version not in self.versions or ref.label:
            raise ModelNotFound(f"no {ref.describe()}")
        return self._info(version)

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: object = None) -> BatchOutput:
        self.calls += 1
        if self.on_predict is not None:
            self.on_predict(self.calls)
        self.images += len(images)
        k = len(self.config.labels)
        # Deterministic in the pixels, so a rerun of a chunk gives the same answer.
        means = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64)
        logits = np.stack([np.cos(means / 40.0 + j) for j in range(k)], axis=1)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        version = self.resolve(ref)
        return BatchOutput(version, probabilities.astype(np.float32),
                           np.zeros(len(images), np.float32))

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        return [self._info(v) for v in sorted(self.versions, reverse=True)]

    def close(self) -> None:
        pass


def run_worker_burst(settings: WorkerSettings, backend: FakeBackend) -> WorkerProcess:
    """Run an in-process worker until the queues are empty (rq's burst mode)."""
    process = WorkerProcess(settings, build_classifier(settings, backend))
    process.serve()
    return process
