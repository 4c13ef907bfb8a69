"""The network, the augmentation and the two-stage training loop, on tiny synthetic data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, InputSpec, ModelConfig
from dermserve.trainer.augment import augment, view_rng
from dermserve.trainer.data import HAM10000_LABELS, Split, load_records, split_by_lesion
from dermserve.trainer.network import build_network, lower_model, set_all_trainable, set_trainable
from dermserve.trainer.settings import TrainSettings
from dermserve.trainer.train import (
    FINAL_WEIGHTS,
    cache_activations,
    epoch_order,
    example_weights,
    plain_view,
    predict_network,
    scale_pixels,
    train_network,
)
from tests.trainer.conftest import write_ham_dataset

SPEC = InputSpec(height=32, width=32, reference_pixels=64 * 48)


def tiny_settings(**changes: Any) -> TrainSettings:
    values: dict[str, Any] = dict(
        backbone="tiny", input_size=32, reference_pixels=64 * 48, first_trainable="tiny_conv2",
        views_per_image=2, batch_size=8, head_epochs=2, fine_tune_epochs=2,
        imbalance_trial_epochs=1, patience=5, seed=3)
    return TrainSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Split:
    root = tmp_path_factory.mktemp("ham")
    write_ham_dataset(root, lesions_per_class=5, images_per_lesion=2, size=(40, 30))
    return split_by_lesion(load_records(root), seed=0, val_fraction=0.2, test_fraction=0.2)


def test_augment_is_seeded_and_has_the_input_shape() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    first = augment(image, SPEC, view_rng(1, 0, 5))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, augment(image, SPEC, view_rng(1, 0, 5)))
    assert not np.array_equal(first, augment(image, SPEC, view_rng(1, 1, 5)))


def test_network_outputs_logits_and_pooled_features() -> None:
    images = np.zeros((3, 32, 32, 3), np.float32)
    for backbone in ("tiny", "mobilenet_v2"):
        network = build_network(7, SPEC, backbone=backbone, weights_path=None)
        logits, features = network(images, training=False)
        assert logits.shape == (3, 7) and features.shape[0] == 3 and features.shape[1] > 7


def test_stage_two_trains_only_the_top_and_no_batch_norm() -> None:
    network = build_network(7, SPEC, backbone="mobilenet_v2", weights_path=None)
    trainable = set_trainable(network, "block_13_expand")
    assert trainable[0] == "block_13_expand" and trainable[-1] == "logits"
    assert "block_12_expand" not in trainable
    assert not any(name.endswith("_BN") or name.endswith("_bn") for name in trainable)


def test_full_fine_tune_trains_every_layer_and_batch_norm_with_its_momentum() -> None:
    import keras

    network = build_network(7, SPEC, backbone="mobilenet_v2", weights_path=None)
    trainable = set_all_trainable(network, 0.99)
    assert trainable[0] == "Conv1" and "bn_Conv1" in trainable and trainable[-1] == "logits"
    norms = [layer for layer in network.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.trainable and layer.momentum == 0.99 for layer in norms)

    frozen_norms = set_all_trainable(network, None)  # BatchNorm kept on ImageNet statistics
    assert frozen_norms[0] == "Conv1" and "bn_Conv1" not in frozen_norms
    assert not any(layer.trainable for layer in norms)


def test_augmentation_touches_only_the_training_split(split: Split, tmp_path: Path) -> None:
    settings = tiny_settings()
    network = build_network(7, SPEC, backbone="tiny")
    lower = lower_model(network, settings.first_trainable)
    train_views, val = cache_activations(lower, split, settings, tmp_path)
    plain_val = lower(scale_pixels(np.stack([plain_view(r, SPEC) for r in split.val])))
    np.testing.assert_allclose(val, np.asarray(plain_val), atol=1e-2)  # float16 cache
    plain_train = np.asarray(lower(scale_pixels(np.stack([plain_view(r, SPEC)
                                                          for r in split.train]))))
    assert train_views.shape == (2, *plain_train.shape)
    assert not np.allclose(train_views[0], plain_train, atol=1e-2)
    assert not np.allclose(train_views[0], train_views[1], atol=1e-2)


def test_balanced_sampling_and_class_weights_even_out_the_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    drawn = labels[epoch_order(labels, "balanced_sampling", np.random.default_rng(0))]
    assert 0.35 < drawn.mean() < 0.65
    order = epoch_order(labels, "class_weights", np.random.default_rng(0))
    assert sorted(order) == list(range(100))
    weights = example_weights(labels, "class_weights", 2)
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())


def test_training_writes_weights_resumes_and_is_seeded(split: Split, tmp_path: Path) -> None:
    settings = tiny_settings()
    network = train_network(split, settings, tmp_path / "a")
    assert (tmp_path / "a" / FINAL_WEIGHTS).exists()
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert summary["imbalance_strategy"] in ("class_weights", "balanced_sampling")
    assert len(summary["stages"]["top"]["history"]) == 2

    again = train_network(split, settings, tmp_path / "a")  # finished: loads, does not train
    for left, right in zip(network.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)

    same_seed = train_network(split, settings, tmp_path / "b")
    for view in ("val.npy", "train-view0.npy", "train-view1.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / "cache" / view),
                                      np.load(tmp_path / "b" / "cache" / view))
    logits_a, _ = predict_network(network, split.val, SPEC)
    logits_b, _ = predict_network(same_seed, split.val, SPEC)
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-4)


def test_an_interrupted_run_resumes_from_its_checkpoints(split: Split, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    train_network(split, tiny_settings(fine_tune_epochs=1), workdir)
    # Pretend the run was cut short after stage 2's first epoch: no final weights, stage open.
    (workdir / FINAL_WEIGHTS).unlink()
    state_path = workdir / "checkpoints" / "stage2-top-state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "finished": False}))
    cache_time = os.stat(workdir / "cache" / "train-view0.npy").st_mtime_ns

    train_network(split, tiny_settings(fine_tune_epochs=3), workdir)
    history = json.loads(state_path.read_text())["history"]
    assert [entry["epoch"] for entry in history] == [0, 1, 2]
    assert history[0] == state["history"][0]
    assert os.stat(workdir / "cache" / "train-view0.npy").st_mtime_ns == cache_time
    assert (workdir / FINAL_WEIGHTS).exists()


def test_predictions_match_the_exported_serving_graph(split: Split, tmp_path: Path) -> None:
    import tensorflow as tf

    from dermserve.trainer.export import ServingModule, save_version

    network = build_network(len(HAM10000_LABELS), SPEC, backbone="tiny", seed=5)
    config = ModelConfig(labels=HAM10000_LABELS, display_names=HAM10000_DISPLAY_NAMES,
                         input=SPEC, temperature=1.7)
    save_version(ServingModule(network, config), config, tmp_path / "1")
    served = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]

    records = split.test
    logits, _ = predict_network(network, records, SPEC, batch_size=4)
    images = np.stack([plain_view(record, SPEC) for record in records])
    probabilities = served(image=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits / 1.7).numpy(), atol=1e-5)


def test_tta_averages_flipped_views(split: Split) -> None:
    network = build_network(len(HAM10000_LABELS), SPEC, backbone="tiny", seed=2)
    plain, features = predict_network(network, split.test, SPEC)
    averaged, tta_features = predict_network(network, split.test, SPEC, tta=True)
    np.testing.assert_array_equal(features, tta_features)
    assert averaged.shape == plain.shape and not np.allclose(averaged, plain)


def test_full_fine_tune_streams_fresh_views_and_trains_batch_norm(split: Split,
                                                                 tmp_path: Path) -> None:
    settings = tiny_settings(fine_tune="full", fine_tune_epochs=2, batchnorm_momentum=0.5)
    head_only = train_network(split, tiny_settings(fine_tune_epochs=0), tmp_path / "head")
    network = train_network(split, settings, tmp_path / "full")
    history = json.loads((tmp_path / "full" / "training.json").read_text())["stages"]["top"]
    assert [entry["epoch"] for entry in history["history"]] == [0, 1]
    # The last epoch's weights: the backbone's first layers and BatchNorm statistics moved.
    network.load_weights(tmp_path / "full" / "checkpoints" / "stage2-full-last.weights.h5")
    for layer, weight in (("tiny_conv1", "kernel"), ("tiny_bn1", "moving_mean")):
        after = getattr(network.get_layer(layer), weight).numpy()
        before = getattr(head_only.get_layer(layer), weight).numpy()
        assert not np.allclose(after, before), layer


def test_streamed_views_are_new_each_epoch_and_never_the_cached_ones(split: Split) -> None:
    from dermserve.trainer.train import streamed_batches

    settings = tiny_settings()
    labels = np.zeros(len(split.train), np.int64)
    batches = streamed_batches(split.train, labels, "class_weights", settings, 7)
    first = batches(0)[0][0]
    assert first.shape == (settings.batch_size, 32, 32, 3) and first.min() >= -1.0
    again = batches(0)[0][0]
    np.testing.assert_array_equal(first, again)  # seeded: a resumed epoch sees the same views
    later = batches(1)[0][0]
    assert not np.array_equal(first, later)
    index = np.sort(np.random.default_rng([settings.seed, 0]).permutation(len(labels))[:8])
    cached_view = scale_pixels(np.stack([augment(Image.open(split.train[i].path), SPEC,
                                                 view_rng(settings.seed, 0, int(i)))
                                         for i in index]))
    assert not np.allclose(first, cached_view)


def test_an_unknown_fine_tune_mode_is_refused_before_any_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dermserve.trainer.cli import main

    with pytest.raises(ValueError, match="fine_tune must be one of"):
        tiny_settings(fine_tune="ful")
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(tmp_path), "--fine-tune", "ful", "--workdir", str(tmp_path)])
    assert exited.value.code == 2
    assert "--fine-tune: invalid choice 'ful'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was split, cached or trained


def test_a_run_reuses_the_cache_of_a_run_on_any_subset_of_its_images(
        split: Split, tmp_path: Path) -> None:
    import dataclasses

    from dermserve.trainer.data import with_extra_training

    extra = split.test[:4]  # stand-ins for another source's training images
    bigger = with_extra_training(split, extra)
    settings = tiny_settings(fine_tune_epochs=0, head_epochs=1)
    bigger.save(tmp_path / "big" / "split.json")
    network = build_network(7, SPEC, backbone="tiny", seed=3)
    lower = lower_model(network, settings.first_trainable)
    big_views, big_val = cache_activations(lower, bigger, settings, tmp_path / "big")

    reuse = dataclasses.replace(settings, cache_source=tmp_path / "big")
    views, val = cache_activations(lower, split, reuse, tmp_path / "small")
    np.testing.assert_array_equal(views, big_views[:, :len(split.train)])
    np.testing.assert_array_equal(val, big_val)
    assert (tmp_path / "small" / "cache" / "train-view0.npy").is_file()

    # any subset of the source's training images, in any order, reuses their own views
    subset = dataclasses.replace(split, train=(*split.train[::-2], extra[1]))
    subset_views, _ = cache_activations(lower, subset, reuse, tmp_path / "subset")
    rows = [*range(len(split.train) - 1, -1, -2), len(split.train) + 1]
    np.testing.assert_array_equal(subset_views, big_views[:, rows])

    # an image the source never cached cannot be reused
    stranger = dataclasses.replace(split, train=(*split.train, split.val[0]))
    with pytest.raises(ValueError, match="not among its own"):
        cache_activations(lower, stranger, reuse, tmp_path / "other")


def test_stage_two_has_its_own_patience(split: Split, tmp_path: Path) -> None:
    # patience 0 stops the head after its first epoch; stage 2 runs its whole schedule
    train_network(split, tiny_settings(patience=0, fine_tune_epochs=3, fine_tune_patience=3),
                  tmp_path)
    summary = json.loads((tmp_path / "training.json").read_text())
    assert len(summary["stages"]["head"]["history"]) == 1
    assert [e["epoch"] for e in summary["stages"]["top"]["history"]] == [0, 1, 2]
