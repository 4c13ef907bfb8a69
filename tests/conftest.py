"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dermserve.core.backends.base import Backend  # noqa: E402
from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, InputSpec, ModelConfig  # noqa: E402
from devtools.stack import ports  # noqa: E402

TINY_MODEL_NAME = "ham10000"
TINY_INPUT = InputSpec(height=32, width=32, reference_pixels=64 * 48)


def tiny_config(seed: int = 0, min_confidence: float = 0.0) -> ModelConfig:
    """A ModelConfig for the tiny stand-in network (no skill; contract tests only)."""
    from dermserve.core.model_config import AbstentionRule

    return ModelConfig(
        labels=tuple(HAM10000_DISPLAY_NAMES),
        display_names=HAM10000_DISPLAY_NAMES,
        input=TINY_INPUT,
        abstention=AbstentionRule(min_confidence=min_confidence),
        metrics={"balanced_accuracy": 0.1 * (seed + 1)},
        description=f"tiny test model, seed {seed}",
    )


def export_tiny(base: Path, version: int, seed: int | None = None) -> Path:
    """Export a tiny version `version` of TINY_MODEL_NAME under `base`; returns its directory."""
    from dermserve.trainer.export import export_tiny_version

    version_dir = base / TINY_MODEL_NAME / str(version)
    export_tiny_version(version_dir, tiny_config(seed if seed is not None else version),
                        seed=seed if seed is not None else version)
    return version_dir


@pytest.fixture(scope="session")
def tiny_model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model base with tiny versions 1 and 2, exported once per session; copy before mutating."""
    base = tmp_path_factory.mktemp("model-template")
    export_tiny(base, 1)
    export_tiny(base, 2)
    return base


def private_copy(template: Path, destination: Path) -> Path:
    """A mutable copy of a session's model base template at `destination`."""
    import shutil

    shutil.copytree(template, destination)
    return destination


@pytest.fixture
def model_base(tiny_model_template: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the tiny model base (versions 1 and 2)."""
    return private_copy(tiny_model_template, tmp_path / "models")


@pytest.fixture(scope="session")
def context_model_template(tiny_model_template: Path,
                           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny versions 1 and 2 (image only) and version 3, whose serving_default takes the
    patient context (tests/context_models.py); copy before mutating."""
    from tests.context_models import export_context_version

    base = private_copy(tiny_model_template,
                        tmp_path_factory.mktemp("context-template") / "models")
    export_context_version(base, 3)
    return base


@pytest.fixture
def context_model_base(context_model_template: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the context model base (versions 1, 2 and 3)."""
    return private_copy(context_model_template, tmp_path / "context-models")


@pytest.fixture
def context_backend(context_model_base: Path) -> Iterator[Backend]:
    """The real embedded backend, micro-batched, serving all three versions of the context
    model base; closed after the test."""
    from dermserve.core.backends.embedded import EmbeddedBackend
    from dermserve.core.batching import MicroBatcher

    embedded = EmbeddedBackend(context_model_base, TINY_MODEL_NAME, settle_s=0.05,
                               max_loaded_versions=3)
    embedded.start()
    batcher = MicroBatcher(embedded)
    yield batcher
    batcher.close()


@pytest.fixture
def free_port() -> Iterator[int]:
    """A TCP port free on loopback at the time of the call."""
    yield ports.free_port()
