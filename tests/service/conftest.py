"""Fixtures for the front service: a FakeBackend, the real server on 127.0.0.1:0 with a real
channel, and images made with pillow."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import grpc
import numpy as np
import pytest
from PIL import Image

from dermserve.core.backends.base import Backend, BatchOutput, ModelRef, VersionInfo, VersionState
from dermserve.core.context import ContextBatch
from dermserve.core.errors import BackendUnavailable, ModelNotFound
from dermserve.core.model_config import (
    HAM10000_DISPLAY_NAMES,
    AbstentionRule,
    InputSpec,
    ModelConfig,
)
from dermserve.service.metrics import Metrics
from dermserve.service.server import FrontServer, create_server
from dermserve.service.settings import Settings
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

FAKE_INPUT = InputSpec(height=16, width=16, reference_pixels=64 * 64)
WAIT_S = 5.0  # seconds any test waits for a state change, at most


def fake_config(description: str = "fake") -> ModelConfig:
    return ModelConfig(labels=tuple(HAM10000_DISPLAY_NAMES), display_names=HAM10000_DISPLAY_NAMES,
                       input=FAKE_INPUT, metrics={"balanced_accuracy": 0.5},
                       description=description)


def default_handler(version: int, images: np.ndarray) -> np.ndarray:
    """Version v puts most mass on label (v - 1) % K, more so for brighter images."""
    k = len(HAM10000_DISPLAY_NAMES)
    probabilities = np.full((len(images), k), 0.05, np.float32)
    probabilities[:, (version - 1) % k] += 0.7
    return probabilities / probabilities.sum(axis=1, keepdims=True)


class FakeBackend:
    """A real Backend over in-memory versions, with switches for outages, delays and bugs.
    `handler(version, images) -> probabilities` decides the answers (MockTransport style)."""

    def __init__(self, versions: tuple[int, ...] = (1, 2),
                 handler: Callable[[int, np.ndarray], np.ndarray] = default_handler) -> None:
        self.versions = {v: fake_config(f"fake version {v}") for v in versions}
        self.labels: dict[str, int] = {}
        self.handler = handler
        self.up = True
        self.delay_s = 0.0
        self.failure: Exception | None = None
        self.batch_sizes: list[int] = []
        self.last_images: np.ndarray | None = None
        self.context_versions: set[int] = set()  # versions that take patient context
        self.contexts: list[ContextBatch | None] = []  # each predict's context rows
        self.closed = False
        self._lock = threading.Lock()

    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        self._check_up()
        return self._info(self._pick(ref))

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        self._check_up()
        version = self._pick(ref)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        with self._lock:
            self.batch_sizes.append(len(images))
            self.last_images = images
            self.contexts.append(context)
        probabilities = self.handler(version, images)
        return BatchOutput(self._info(version), probabilities,
                           np.zeros(len(images), np.float32))

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        self._check_up()
        return [self._info(v) for v in sorted(self.versions, reverse=True)]

    def close(self) -> None:
        self.closed = True

    def _check_up(self) -> None:
        if not self.up:
            raise BackendUnavailable("fake backend is down")

    def _pick(self, ref: ModelRef) -> int:
        if ref.version is not None:
            if ref.version not in self.versions:
                raise ModelNotFound(f"no version {ref.version}")
            return ref.version
        if ref.label:
            if ref.label not in self.labels:
                raise ModelNotFound(f"no label {ref.label}")
            return self.labels[ref.label]
        if not self.versions:
            raise BackendUnavailable("no version loaded")
        return max(self.versions)

    def _info(self, version: int) -> VersionInfo:
        assigned = tuple(sorted(k for k, v in self.labels.items() if v == version))
        return VersionInfo("ham10000", version, VersionState.AVAILABLE, self.versions[version],
                           assigned, takes_context=version in self.context_versions)


MELANOMA_METRICS = {"melanoma_threshold": 0.165, "melanoma_sensitivity": 0.733,
                    "melanoma_specificity": 0.681}
"""A version's recorded melanoma operating point, as the released versions record it."""


def probability_row(**probabilities: float) -> np.ndarray:
    """One row over the seven classes: the given ones, the rest sharing what is left."""
    labels = tuple(HAM10000_DISPLAY_NAMES)
    rest = (1.0 - sum(probabilities.values())) / (len(labels) - len(probabilities))
    return np.array([[probabilities.get(label, rest) for label in labels]], np.float32)


class ThresholdBackend(FakeBackend):
    """Version 1 only, answering `row` for every image, with `rule` and MELANOMA_METRICS."""

    def __init__(self, row: np.ndarray, rule: AbstentionRule) -> None:
        super().__init__(versions=(1,), handler=lambda version, images: np.repeat(
            row, len(images), axis=0))
        self.versions[1] = replace(fake_config(), abstention=rule, metrics=MELANOMA_METRICS)


def server_settings(**changes: object) -> Settings:
    """Settings for a test server: any free port, no metrics port, fast health probes."""
    base = Settings(listen_address="127.0.0.1:0", metrics_port=0, health_interval_s=0.05,
                    grace_period_s=1.0, grpc_workers=48)
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class Running:
    server: FrontServer
    port: int
    channel: grpc.Channel
    stub: pb_grpc.LesionClassifierStub
    metrics: Metrics


@contextmanager
def running_server(backend: Backend, settings: Settings | None = None,
                   channel: grpc.Channel | None = None) -> Iterator[Running]:
    """The real server on 127.0.0.1:0 and a real channel to it; stopped on exit."""
    settings = settings or server_settings()
    metrics = Metrics()
    server, port = create_server(settings, backend, metrics)
    server.start()
    channel = channel or grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, port, channel, pb_grpc.LesionClassifierStub(channel), metrics)
    finally:
        channel.close()
        server.stop(0.5)


@pytest.fixture
def context_server(context_backend: Backend) -> Iterator[Running]:
    """The real server over the context model base (tests/conftest.py `context_backend`):
    versions 1 and 2 take the image only, version 3 patient context too."""
    with running_server(context_backend) as running:
        yield running


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fake_server(fake_backend: FakeBackend) -> Iterator[Running]:
    with running_server(fake_backend) as running:
        yield running


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(width: int = 200, height: int = 150, colour: tuple[int, int, int] = (180, 90, 60),
          mode: str = "RGB") -> Image.Image:
    """A plain image with a little texture (noise), like a photo in size if not in content."""
    rng = np.random.default_rng(0)
    base = np.asarray(Image.new("RGB", (width, height), colour), np.int16)
    noisy = np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB").convert(mode)


def good_jpeg() -> bytes:
    return encode(photo())


def reason_of(error: grpc.RpcError) -> str | None:
    """The dermserve-reason trailing metadata of a failed call."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "dermserve-reason":
            return str(value)
    return None


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


__all__ = ["pb", "FakeBackend", "Running", "running_server", "server_settings", "encode", "photo",
           "good_jpeg", "reason_of", "wait_until"]
