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
    import dataclasses

    with pytest.raises(VersionMismatch, match="pass its --input-size"):  # another input size
        rebuild_version_network(tmp_path / "1", dataclasses.replace(
            settings, input_size=settings.input_size * 2), 7)


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


def test_the_weight_is_chosen_by_balanced_accuracy_then_melanoma_auc_then_nearest_half() -> None:
    from dermserve.trainer.two_origin import best_weight, weight_trials

    mel, nv = HAM10000_LABELS.index("mel"), HAM10000_LABELS.index("nv")
    y = np.array([mel, mel, nv, nv])
    # the version calls everything nv; the other origin ranks and calls melanoma right
    version = np.zeros((4, 7))
    version[:, nv] = 4.0
    version[0, mel] = 3.0
    other = np.full((4, 7), -5.0)
    other[:, nv] = -0.1
    other[:2, mel], other[:2, nv] = -0.1, -3.0
    trials = weight_trials(version, other, y, mel, choices=(0.2, 0.5, 0.8))
    by_weight = {t["weight"]: t for t in trials}
    assert by_weight[0.2]["balanced_accuracy"] == pytest.approx(0.5)  # the version's nv for all
    assert by_weight[0.8]["balanced_accuracy"] == pytest.approx(1.0)
    assert best_weight(trials) == 0.8
    # level on both: the share nearest 0.5 wins; then melanoma AUC decides before nearness
    level = [{"weight": w, "balanced_accuracy": 0.6, "melanoma_auc": 0.7} for w in (0.3, 0.4, 0.7)]
    assert best_weight(level) == 0.4
    level[2]["melanoma_auc"] = 0.71
    assert best_weight(level) == 0.7


def test_choose_weight_tries_every_share_on_the_held_out_images_and_a_rerun_reuses_it(
        tmp_path: Path) -> None:
    import dataclasses
    import json

    from dermserve.trainer.two_origin import (
        SKLESION_WEIGHT_CHOICES,
        WEIGHT_CHOICE_FILE,
        choose_weight,
    )
    from tests.trainer.conftest import write_ham_dataset
    from tests.trainer.test_external import write_isic_like

    _, settings = _tiny_version(tmp_path / "1")
    tiny_sklesion(tmp_path / "sklesion.keras")
    write_ham_dataset(tmp_path / "ham")
    settings = dataclasses.replace(
        settings, data_dir=tmp_path / "ham", workdir=tmp_path / "work",
        extra_train_dir=write_isic_like(tmp_path / "isic2017"), extra_holdout=True)
    weight = choose_weight(tmp_path / "1", tmp_path / "sklesion.keras", settings)
    saved = json.loads((tmp_path / "work" / WEIGHT_CHOICE_FILE).read_text())
    assert weight == saved["weight"] and weight in SKLESION_WEIGHT_CHOICES
    assert [t["weight"] for t in saved["trials"]] == list(SKLESION_WEIGHT_CHOICES)
    assert len(saved["image_ids"]) == 4  # every second of the 9 train rows
    # a resumed run reads the choice back instead of predicting again
    saved["weight"] = 0.3
    (tmp_path / "work" / WEIGHT_CHOICE_FILE).write_text(json.dumps(saved))
    assert choose_weight(tmp_path / "1", tmp_path / "sklesion.keras", settings) == 0.3

    from dermserve.trainer.errors import DataError

    with pytest.raises(DataError, match="--extra-holdout"):
        choose_weight(tmp_path / "1", tmp_path / "sklesion.keras",
                      dataclasses.replace(settings, extra_holdout=False))


def test_the_context_vector_in_the_graph_is_sklesions_own_for_every_served_code() -> None:
    from dermserve.core.context import SEX_CODES, SITE_CODES, UNKNOWN_AGE
    from dermserve.trainer.two_origin_network import (
        SKLESION_SEXES,
        SKLESION_SITES,
        context_vector,
        sklesion_context,
    )

    sex_names = {code: sex.value for sex, code in SEX_CODES.items()}
    site_names = {code: site.value for site, code in SITE_CODES.items()}
    rows = [(age, sex, site) for age in (UNKNOWN_AGE, 0.0, 42.5, 90.0)
            for sex in (0, *sex_names, 9) for site in (-3, 0, *site_names, len(site_names) + 1)]
    ages, sexes, sites = (np.array(column) for column in zip(*rows, strict=True))
    served = np.asarray(context_vector(ages.astype(np.float32), sexes.astype(np.int32),
                                       sites.astype(np.int32)))
    expected = np.stack([sklesion_context(None if age < 0 else age, sex_names.get(sex, "unknown"),
                                          site_names.get(site, "unknown"))
                         for age, sex, site in rows])
    np.testing.assert_allclose(served, expected, atol=1e-6)
    # every age, sex and site group is reached, so the comparison covers the whole vector
    assert len({tuple(row) for row in expected}) == 4 * len(SKLESION_SEXES) * len(SKLESION_SITES)


def test_a_two_origin_version_with_context_is_served_and_explained_with_the_patient_context(
        tmp_path: Path, images: np.ndarray) -> None:
    import tensorflow as tf

    from dermserve.core.backends.savedmodel import LoadedVersion
    from dermserve.core.context import CONTEXT_INPUTS, ContextBatch, lenient_context
    from dermserve.core.model_config import EXPLAIN_SIGNATURE, SERVING_SIGNATURE
    from dermserve.trainer.export import ServingModule, save_version
    from dermserve.trainer.served import ServedVersion
    from dermserve.trainer.two_origin import rebuild_version_network
    from dermserve.trainer.two_origin_network import (
        Mixing,
        network_takes_context,
        sklesion_branch,
        two_origin_network,
    )

    _, settings = _tiny_version(tmp_path / "1")
    version = rebuild_version_network(tmp_path / "1", settings, 7)
    sklesion = tiny_sklesion(tmp_path / "model.keras")
    network = two_origin_network(version, sklesion_branch(sklesion, 32, with_context=True),
                                 Mixing(0.5, PRIORS))
    assert network_takes_context(network)
    given = ContextBatch.of([lenient_context(70, "male", "face"), None,
                             lenient_context(8, "female", "lower extremity")])
    neutral = ContextBatch.neutral(3)
    scaled = images.astype(np.float32) / 127.5 - 1

    def network_probabilities(context: ContextBatch) -> np.ndarray:
        logits = network([scaled, *context.tensors().values()], training=False)[0]
        return _softmax(np.asarray(logits))

    with_context, without = network_probabilities(given), network_probabilities(neutral)
    assert np.abs(with_context[[0, 2]] - without[[0, 2]]).max() > 1e-4  # the context counts
    np.testing.assert_allclose(with_context[1], without[1], atol=1e-6)  # an empty row is neutral

    config = ModelConfig(labels=HAM10000_LABELS, display_names={}, input=TINY_INPUT)
    save_version(ServingModule(network, config), config, tmp_path / "2")
    served = ServedVersion(tmp_path / "2")
    assert served.takes_context
    np.testing.assert_allclose(served.classify_arrays(images, given)[0], with_context, atol=1e-5)
    np.testing.assert_allclose(served.classify_arrays(images)[0], without, atol=1e-5)

    loaded = tf.saved_model.load(str(tmp_path / "2"))
    for name in (SERVING_SIGNATURE, EXPLAIN_SIGNATURE):
        assert set(CONTEXT_INPUTS) <= set(
            loaded.signatures[name].structured_input_signature[1]), name
    backend_version = LoadedVersion(loaded, config)  # as the embedded backend loads it
    assert backend_version.takes_context and backend_version.explain_takes_context
    explained = backend_version.explain(images, np.array([-1, 4, 0], np.int32), given)
    np.testing.assert_allclose(explained["probabilities"], with_context, atol=1e-5)
    heatmap = explained["heatmap"]
    assert heatmap.shape[0] == 3 and heatmap.min() >= 0 and heatmap.max() <= 1

    # publishing checks the recorded sample with the sample images' own context
    from PIL import Image

    from dermserve.trainer.errors import PublishError
    from dermserve.trainer.external import Measurer
    from dermserve.trainer.publish import SamplePredictions, verify_reproduces
    from dermserve.trainer.served import read_images

    paths = []
    for n, image in enumerate(images):
        paths.append(tmp_path / f"ISIC_{n:07d}.png")
        Image.fromarray(image).save(paths[-1])
    probabilities, ood = served.classify(read_images(paths), given)
    SamplePredictions([p.stem for p in paths], probabilities.tolist(),
                      ood.tolist()).write(tmp_path / "2")
    verify_reproduces(tmp_path / "2", paths, given)
    with pytest.raises(PublishError, match="reloaded probabilities differ"):
        verify_reproduces(tmp_path / "2", paths)  # neutral rows: not what was recorded

    assert Measurer(tmp_path / "2", served).context_mode == "given"
    assert Measurer(tmp_path / "2", served, use_context=False).context_mode == "neutral"
    assert Measurer(tmp_path / "1").context_mode == "not taken"


def test_predict_network_sends_each_record_its_own_context(tmp_path: Path) -> None:
    from dermserve.trainer.data import load_records, record_contexts
    from dermserve.trainer.train import plain_view, predict_network, scale_pixels
    from dermserve.trainer.two_origin import rebuild_version_network
    from dermserve.trainer.two_origin_network import Mixing, sklesion_branch, two_origin_network
    from tests.trainer.conftest import write_ham_dataset

    _, settings = _tiny_version(tmp_path / "1")
    version = rebuild_version_network(tmp_path / "1", settings, 7)
    network = two_origin_network(
        version, sklesion_branch(tiny_sklesion(tmp_path / "model.keras"), 32, with_context=True),
        Mixing(0.5, PRIORS))
    write_ham_dataset(tmp_path / "ham")
    records = load_records(tmp_path / "ham")
    assert len({(r.age, r.sex, r.localization) for r in records}) > 1
    logits, _ = predict_network(network, records, settings.input_spec(), batch_size=4)

    views = np.stack([plain_view(r, settings.input_spec()) for r in records])
    expected = network([scale_pixels(views), *record_contexts(records).tensors().values()],
                       training=False)[0]
    np.testing.assert_allclose(logits, np.asarray(expected), atol=1e-5)
