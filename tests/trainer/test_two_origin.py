"""The two-origin model (issue 29): a published version rebuilt from its stored variables and
combined in one graph with a sklesion-shaped Xception, served and explained like any version.
A tiny stand-in with sklesion's structure (a nested `xception` model with its last activation
named as the real one, a Normalization layer, a metadata input) takes the real model's place;
the real one is 83 MB and is fetched only at training time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermserve.core.model_config import ModelConfig
from dermserve.trainer.data import HAM10000_LABELS
from dermserve.trainer.settings import TrainSettings
from tests.conftest import TINY_INPUT

PRIORS = (0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02)


def tiny_sklesion(path: Path) -> Any:
    """sklesion's layout in miniature, saved and loaded back as its model.keras is."""
    import keras

    from dermserve.trainer.two_origin_network import SKLESION_FEATURE_MAP, SKLESION_SIZE

    keras.utils.set_random_seed(3)
    inner = keras.Input((SKLESION_SIZE, SKLESION_SIZE, 3))
    last = keras.layers.Conv2D(4, 3, strides=32, activation="relu",
                               name=SKLESION_FEATURE_MAP)(inner)
    xception = keras.Model(inner, keras.layers.GlobalAveragePooling2D()(last), name="xception")
    image = keras.Input((SKLESION_SIZE, SKLESION_SIZE, 3))
    metadata = keras.Input((10,))
    normalised = keras.layers.Normalization(mean=[120.0] * 3, variance=[3000.0] * 3)(image)
    joined = keras.layers.Concatenate()([xception(normalised), keras.layers.Dense(3)(metadata)])
    model = keras.Model([image, metadata],
                        keras.layers.Dense(7, activation="softmax")(joined))
    model.save(path)
    return keras.models.load_model(path, compile=False)


def _tiny_version(version_dir: Path) -> tuple[Any, TrainSettings]:
    from dermserve.trainer.ensemble_network import ensemble_network
    from dermserve.trainer.export import ServingModule, round_weights, save_version
    from dermserve.trainer.network import build_network

    settings = TrainSettings(backbone="tiny", input_size=TINY_INPUT.height,
                             reference_pixels=TINY_INPUT.reference_pixels,
                             colour_constancy="shades_of_gray")
    members = [build_network(7, TINY_INPUT, "tiny", seed=10 + n,
                             colour_constancy="shades_of_gray", name=f"member_{n}")
               for n in range(2)]
    ensemble = ensemble_network(members)
    round_weights(ensemble)
    config = ModelConfig(labels=HAM10000_LABELS, display_names={}, input=TINY_INPUT)
    save_version(ServingModule(ensemble, config, weights_dtype="float16"), config, version_dir)
    return ensemble, settings


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)


def test_a_published_version_is_rebuilt_from_its_stored_variables(
        tmp_path: Path, images: np.ndarray) -> None:
    from dermserve.trainer.errors import VersionMismatch
    from dermserve.trainer.two_origin import rebuild_version_network

    original, settings = _tiny_version(tmp_path / "1")
    rebuilt = rebuild_version_network(tmp_path / "1", settings, 7)
    scaled = images.astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(np.asarray(rebuilt(scaled, training=False)[0]),
                               np.asarray(original(scaled, training=False)[0]), atol=1e-5)
    with pytest.raises(VersionMismatch, match="stored shape"):  # another head: refused
        rebuild_version_network(tmp_path / "1", settings, 5)


def test_the_two_origin_network_is_the_prior_corrected_geometric_mean_served_and_explained(
        tmp_path: Path, images: np.ndarray) -> None:
    import tensorflow as tf

    from dermserve.core.model_config import EXPLAIN_SIGNATURE
    from dermserve.trainer.export import ServingModule, save_version
    from dermserve.trainer.served import ServedVersion
    from dermserve.trainer.two_origin import rebuild_version_network
    from dermserve.trainer.two_origin_network import (
        NEUTRAL_CONTEXT,
        SKLESION_SIZE,
        Mixing,
        sklesion_branch,
        two_origin_network,
    )

    _tiny_version(tmp_path / "1")
    settings = TrainSettings(backbone="tiny", input_size=32,
                             reference_pixels=TINY_INPUT.reference_pixels,
                             colour_constancy="shades_of_gray")
    version = rebuild_version_network(tmp_path / "1", settings, 7)
    sklesion = tiny_sklesion(tmp_path / "model.keras")
    network = two_origin_network(version, sklesion_branch(sklesion, 32), Mixing(0.3, PRIORS))
    scaled = images.astype(np.float32) / 127.5 - 1
    logits, features = (np.asarray(t) for t in network(scaled, training=False))

    ours = np.asarray(version(scaled, training=False)[0])
    pixels = tf.image.resize((scaled + 1.0) * 127.5, (SKLESION_SIZE, SKLESION_SIZE))
    theirs = np.asarray(sklesion([pixels, tf.constant(np.repeat(NEUTRAL_CONTEXT[None], 3, 0))]))
    expected = (0.7 * np.log(_softmax(ours))
                + 0.3 * np.log(_normalised(theirs / np.asarray(PRIORS))))
    np.testing.assert_allclose(_softmax(logits), _softmax(expected), atol=1e-5)
    assert features.shape == (3, np.asarray(version(scaled)[1]).shape[1])

    config = ModelConfig(labels=HAM10000_LABELS, display_names={}, input=TINY_INPUT)
    save_version(ServingModule(network, config), config, tmp_path / "2")
    served, _ = ServedVersion(tmp_path / "2").classify_arrays(images)
    np.testing.assert_allclose(served, _softmax(logits), atol=1e-5)
    loaded = tf.saved_model.load(str(tmp_path / "2"))
    out = loaded.signatures[EXPLAIN_SIGNATURE](image=tf.constant(images),
                                               class_index=tf.constant([-1, 4, 0]))
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape[0] == 3 and heatmap.min() >= 0 and heatmap.max() <= 1
    np.testing.assert_array_equal(out["class_index"].numpy()[1:], [4, 0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _normalised(values: np.ndarray) -> np.ndarray:
    return values / values.sum(axis=1, keepdims=True)
