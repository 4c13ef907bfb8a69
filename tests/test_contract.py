"""The model-version contract: signatures, config round trip and the shared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dermserve.core.model_config import ModelConfig
from dermserve.core.preprocessing import normalise_detail, to_model_input
from tests.conftest import TINY_INPUT, TINY_MODEL_NAME


def test_exported_version_follows_the_signature_contract(tiny_model_template: Path) -> None:
    import tensorflow as tf

    version_dir = tiny_model_template / TINY_MODEL_NAME / "1"
    loaded = tf.saved_model.load(str(version_dir))
    images = np.zeros((3, TINY_INPUT.height, TINY_INPUT.width, 3), np.uint8)
    out = loaded.signatures["serving_default"](image=tf.constant(images))
    assert out["probabilities"].shape == (3, 7)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert out["ood_score"].shape == (3,)
    meta = loaded.signatures["metadata"](probe=tf.zeros([2], tf.int32))
    assert meta["labels"].shape == (2, 7)
    from_graph = ModelConfig.from_json(meta["config"].numpy()[0])
    assert from_graph == ModelConfig.read(version_dir)
    assert from_graph.labels == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def test_preprocessing_brings_sharp_inputs_to_training_detail() -> None:
    large = Image.new("RGB", (600, 450), (200, 100, 50))
    reduced = normalise_detail(large, 200 * 150)
    assert reduced.size == (200, 150)
    small = Image.new("RGB", (100, 75))
    assert normalise_detail(small, 200 * 150) is small


def test_to_model_input_gives_uint8_rgb_of_the_input_size() -> None:
    grey = Image.new("L", (640, 480), 128)
    array = to_model_input(grey, TINY_INPUT)
    assert array.shape == (TINY_INPUT.height, TINY_INPUT.width, 3)
    assert array.dtype == np.uint8
    assert int(array[0, 0, 0]) == 128
