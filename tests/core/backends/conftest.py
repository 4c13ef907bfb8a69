"""Fixtures for the backend tests: an extra exported version, and backends that close themselves.

`fake_tfserving` (see tests/core/backends/tfserving_server.py) starts a TF Serving stand-in over
real gRPC on 127.0.0.1; other test areas can use it too, by importing `start_fake_tfserving`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dermserve.core.backends.embedded import EmbeddedBackend
from tests.conftest import TINY_MODEL_NAME, export_tiny
from tests.core.backends.tfserving_server import FakeTFServing, start_fake_tfserving

FAST_POLL_S = 0.05
"""Poll interval for hot-reload tests: quick pick-up without spinning the shared CPUs."""


@pytest.fixture(scope="session")
def version3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny version 3 (seed 3), exported once per session outside any model base."""
    return export_tiny(tmp_path_factory.mktemp("version3"), 3)


@pytest.fixture
def model_dir(model_base: Path) -> Path:
    return model_base / TINY_MODEL_NAME


@pytest.fixture
def make_backend(model_base: Path) -> Iterator[Callable[..., EmbeddedBackend]]:
    """Build and start an EmbeddedBackend over `model_base` (by default); closed after the test."""
    backends: list[EmbeddedBackend] = []

    def make(base: Path | None = None, start: bool = True, **kwargs: Any) -> EmbeddedBackend:
        kwargs.setdefault("settle_s", 0.05)
        backend = EmbeddedBackend(base or model_base, TINY_MODEL_NAME, **kwargs)
        backends.append(backend)
        if start:
            backend.start()
        return backend

    yield make
    for backend in backends:
        backend.close()


@pytest.fixture
def fake_tfserving(model_base: Path) -> Iterator[FakeTFServing]:
    """The TF Serving stand-in over a copy of versions 1 and 2, labels stable=1 and canary=2."""
    server = start_fake_tfserving(model_base, TINY_MODEL_NAME, poll_interval_s=FAST_POLL_S,
                                  settle_s=0.05, version_labels={"stable": 1, "canary": 2})
    yield server
    server.stop()
