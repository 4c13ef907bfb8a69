"""The embedded backend serves each version's graph with its variables folded into constants
(dermserve/core/backends/savedmodel.py `freeze_serving`): the same answers as the signature, a
setting to serve the variables as they are, and the signature itself whenever freezing fails or
changes an answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermserve.core.backends.base import ModelRef
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.backends.factory import open_backend
from dermserve.core.backends.savedmodel import (
    FrozenSignature,
    LoadedVersion,
    check_same_answers,
    freeze_serving,
)
from dermserve.core.model_config import OOD_OUTPUT, PROBABILITIES_OUTPUT
from dermserve.service.settings import Settings
from tests.conftest import TINY_MODEL_NAME, tiny_config
from tests.core.backends.test_embedded import images


def test_a_version_is_frozen_by_default_and_answers_as_its_signature(model_base: Path) -> None:
    version_dir = model_base / TINY_MODEL_NAME / "1"
    frozen, as_stored = LoadedVersion.load(version_dir), LoadedVersion.load(version_dir,
                                                                            freeze=False)
    assert frozen.frozen and not as_stored.frozen
    batch = images(4)
    for got, expected in zip(frozen.predict(batch), as_stored.predict(batch), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(("flags", "frozen"), [([], True), (["--freeze-graph=false"], False)])
def test_the_freeze_graph_setting_reaches_the_loaded_versions(
        model_base: Path, flags: list[str], frozen: bool) -> None:
    settings = Settings.from_sources(["--model-base", str(model_base), *flags])
    backend = open_backend(settings, block=True)
    try:
        assert isinstance(backend, EmbeddedBackend)
        with backend._acquire(ModelRef(TINY_MODEL_NAME)) as (_, loaded):
            assert loaded.frozen is frozen
    finally:
        backend.close()


def test_a_signature_that_cannot_be_frozen_is_served_as_it_is(
        caplog: pytest.LogCaptureFixture) -> None:
    def signature(**inputs: Any) -> dict[str, Any]:  # no input signature to trace
        raise AssertionError("freezing must not call it")

    with caplog.at_level(logging.WARNING, logger="dermserve.core.backends.savedmodel"):
        assert freeze_serving(signature, tiny_config()) is signature
    assert "cannot freeze its graph" in caplog.text


def test_a_frozen_graph_that_answers_differently_is_refused(model_base: Path) -> None:
    import tensorflow as tf

    saved_model = tf.saved_model.load(str(model_base / TINY_MODEL_NAME / "1"))
    signature = saved_model.signatures["serving_default"]  # alive while saved_model is
    config = tiny_config()
    structure = {OOD_OUTPUT: 0, PROBABILITIES_OUTPUT: 1}  # flattened in sorted key order
    impossible = FrozenSignature(lambda inputs: [  # no probability or score is ever -1
        tf.fill([tf.shape(inputs[0])[0]], -1.0),
        tf.fill([tf.shape(inputs[0])[0], len(config.labels)], -1.0)], structure)
    with pytest.raises(ValueError, match="differs"):
        check_same_answers(signature, impossible, config)
    faithful = freeze_serving(signature, config)
    assert isinstance(faithful, FrozenSignature)
    check_same_answers(signature, faithful, config)
