"""Export a network as a dermserve SavedModel version: the serving contract lives here.

Signatures (documented in docs/model-contract.md):
  serving_default(image: uint8 [N, H, W, 3] RGB, already `core.preprocessing.to_model_input`;
                  and age_years, sex, site [N] when the network takes the patient context)
      -> probabilities: float32 [N, K] calibrated (softmax of logits / temperature)
      -> ood_score:     float32 [N]    Mahalanobis distance of the pooled features to the nearest
                                       class mean, in a PCA subspace of the training features when
                                       the statistics carry a projection (0 without statistics)
  metadata(probe: int32 [N])
      -> labels: string [N, K], config: string [N] (the ModelConfig JSON)
  explain(image and context: as serving_default, class_index: int32 [N], -1 for the top class)
      -> heatmap: float32 [N, h, w] Grad-CAM of that class on the last convolutional feature
                  map, in [0, 1]; probabilities and ood_score as serving_default;
                  class_index: int32 [N], the class explained
      Exported whenever the network has a last feature map (`explainable_network`).
Every output is batched along axis 0 so that TF Serving's server-side batching can split them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from dermserve.core.context import CONTEXT_INPUT_DTYPES, CONTEXT_INPUTS
from dermserve.core.model_config import (
    CLASS_INDEX_INPUT,
    CLASS_INDEX_OUTPUT,
    CONFIG_OUTPUT,
    EXPLAIN_SIGNATURE,
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    METADATA_SIGNATURE,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    PROBE_INPUT,
    SERVING_SIGNATURE,
    ModelConfig,
)
from dermserve.trainer.features import FeatureStatistics
from dermserve.trainer.two_origin_network import network_takes_context

__all__ = ["FeatureStatistics", "ServingModule", "build_tiny_network", "explainable_network",
           "export_tiny_version", "grad_cam", "mahalanobis_min", "mahalanobis_min_squared",
           "project_features", "round_weights", "save_version"]


def mahalanobis_min_squared(features: tf.Tensor, means: tf.Tensor,
                            precision: tf.Tensor) -> tf.Tensor:
    """min_k (f - mu_k)^T P (f - mu_k), computed without materialising [N, K, D, D]."""
    diff = features[:, None, :] - means[None, :, :]                     # [N, K, D]
    projected = tf.einsum("nkd,de->nke", diff, precision)               # [N, K, D]
    return tf.reduce_min(tf.reduce_sum(projected * diff, axis=-1), axis=-1)


def mahalanobis_min(features: tf.Tensor, means: tf.Tensor, precision: tf.Tensor) -> tf.Tensor:
    """The square root of `mahalanobis_min_squared` (no PCA, no residual term)."""
    return tf.sqrt(tf.maximum(mahalanobis_min_squared(features, means, precision), 0.0))


def project_features(features: tf.Tensor, centre: tf.Tensor, projection: tf.Tensor,
                     residual_variance: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(f - centre) @ projection, and |the part outside the subspace|^2 / residual variance:
    trainer.features.FeatureStatistics's probabilistic-PCA approximation, in the graph."""
    centred = features - centre[None, :]
    projected = tf.matmul(centred, projection)
    residual = tf.reduce_sum(tf.square(centred), -1) - tf.reduce_sum(tf.square(projected), -1)
    return projected, tf.maximum(residual, 0.0) / residual_variance


def explainable_network(network: Any) -> Any | None:
    """`network` with its last convolutional feature map(s) as outputs after logits and features
    (one network: one map; an ensemble or a two-origin network: one per member), sharing its
    variables; None when it
    has none (then the version is exported without the `explain` signature)."""
    from dermserve.trainer.ensemble_network import ensemble_with_feature_maps
    from dermserve.trainer.network import with_feature_map
    from dermserve.trainer.two_origin_network import two_origin_with_feature_maps

    return (with_feature_map(network) or ensemble_with_feature_maps(network)
            or two_origin_with_feature_maps(network))


def grad_cam(feature_maps: list[tf.Tensor], gradients: list[tf.Tensor]) -> tf.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of each map: the gradients averaged over positions are
    channel weights, the weighted sum of channels is ReLU'd. Several maps (an ensemble's members)
    are resized to the first one's size and averaged before the per-image normalisation to
    [0, 1], so a member whose evidence is weaker counts for less. A map with no positive
    evidence is all zeros."""
    size = tf.shape(feature_maps[0])[1:3]
    cams = []
    for feature_map, gradient in zip(feature_maps, gradients, strict=True):
        weights = tf.reduce_mean(gradient, axis=[1, 2], keepdims=True)           # [N, 1, 1, C]
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))[..., None]  # [N, h, w, 1]
        cams.append(tf.image.resize(cam, size)[..., 0])
    cam = tf.reduce_mean(tf.stack(cams, axis=0), axis=0)                          # [N, h, w]
    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(cam, peak)


WEIGHT_DTYPES = ("float32", "float16")
"""How the network's variables are stored: float16 halves the version's size; the graph casts them
back to float32, so only the weights are rounded (see `round_weights`), not the arithmetic."""


def round_weights(network: Any) -> None:
    """Round the network's float variables to float16 precision in place: afterwards the network
    computes exactly what a float16-stored export serves."""
    for variable in network.variables:
        if np.dtype(variable.dtype) == np.float32:
            variable.assign(np.asarray(variable).astype(np.float16).astype(np.float32))


class _HalfWeights(tf.Module):  # type: ignore[misc]  # tf is untyped
    """The network's variables stored as float16 (other dtypes as they are), and a forward pass
    that casts them to float32 and runs the network statelessly, so the float32 originals are
    neither read by the graph nor saved."""

    def __init__(self, network: Any) -> None:
        super().__init__()
        self.trainable = [self._stored(v) for v in network.trainable_variables]
        self.non_trainable = [self._stored(v) for v in network.non_trainable_variables]
        self._call = network.stateless_call  # a bound method: not tracked, not saved

    @staticmethod
    def _stored(variable: Any) -> tf.Variable:
        value = np.asarray(variable)
        if value.dtype == np.float32:
            value = value.astype(np.float16)
        return tf.Variable(value, trainable=False)

    def __call__(self, scaled: tf.Tensor, training: bool = False) -> Any:
        def restore(stored: list[tf.Variable]) -> list[tf.Tensor]:
            return [tf.cast(v, tf.float32) if v.dtype == tf.float16 else tf.identity(v)
                    for v in stored]

        outputs, _ = self._call(restore(self.trainable), restore(self.non_trainable), scaled,
                                training=False)
        return outputs


class ServingModule(tf.Module):  # type: ignore[misc]  # tf is untyped
    """Wraps a network `float images in [-1, 1] -> (logits, pooled features)` with the contract.
    `weights_dtype="float16"` stores the variables at half size (round the network first with
    `round_weights` so that training-side predictions match the export). `explain=False` leaves
    the `explain` signature out (as versions exported before it existed). A network that takes
    the patient context (`two_origin_network.network_takes_context`) gets the context inputs in both
    `serving_default` and `explain`."""

    def __init__(self, network: Any, config: ModelConfig,
                 statistics: FeatureStatistics | None = None,
                 weights_dtype: str = "float32", explain: bool = True) -> None:
        super().__init__()
        if weights_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weights_dtype must be one of {WEIGHT_DTYPES}, not {weights_dtype!r}")
        # One graph serves both signatures, so the version stores each variable once.
        explainable = explainable_network(network) if explain else None
        self.explainable = explainable is not None
        network = explainable if explainable is not None else network
        self.network = _HalfWeights(network) if weights_dtype == "float16" else network
        self.temperature = tf.Variable(config.temperature, dtype=tf.float32, trainable=False)
        self.labels = tf.constant(list(config.labels))
        self.config_json = tf.constant(config.to_json())
        self.has_statistics = statistics is not None
        self.has_projection = statistics is not None and statistics.projection is not None
        if statistics is not None:
            self.class_means = tf.constant(statistics.class_means)
            self.precision = tf.constant(statistics.precision)
        if statistics is not None and statistics.projection is not None:
            self.feature_centre = tf.constant(statistics.centre)
            self.feature_projection = tf.constant(statistics.projection)
            self.residual_variance = tf.constant(statistics.residual_variance or 1.0, tf.float32)
        spec = tf.TensorSpec([None, config.input.height, config.input.width, 3], tf.uint8,
                             name=IMAGE_INPUT)
        class_index = tf.TensorSpec([None], tf.int32, name=CLASS_INDEX_INPUT)
        self.takes_context = network_takes_context(network)
        if self.takes_context:  # the argument names are the signature's input names
            context = [tf.TensorSpec([None], tf.as_dtype(CONTEXT_INPUT_DTYPES[name]), name=name)
                       for name in CONTEXT_INPUTS]
            self.serve = tf.function(self._serve_with_context,
                                     input_signature=[spec, *context])
            explain_function = tf.function(self._explain_with_context,
                                           input_signature=[spec, class_index, *context])
        else:
            self.serve = tf.function(self._serve, input_signature=[spec])
            explain_function = tf.function(self._explain, input_signature=[spec, class_index])
        self.metadata = tf.function(
            self._metadata, input_signature=[tf.TensorSpec([None], tf.int32, name=PROBE_INPUT)])
        if self.explainable:  # saving traces every tf.function the module holds
            self.explain = explain_function

    def signatures(self) -> dict[str, Any]:
        """The concrete functions to save, by signature name."""
        signatures = {SERVING_SIGNATURE: self.serve.get_concrete_function(),
                      METADATA_SIGNATURE: self.metadata.get_concrete_function()}
        if self.explainable:
            signatures[EXPLAIN_SIGNATURE] = self.explain.get_concrete_function()
        return signatures

    def _serve(self, image: tf.Tensor, *context: tf.Tensor) -> dict[str, tf.Tensor]:
        logits, features = self.network(_joined(_scaled(image), context), training=False)[:2]
        probabilities = tf.nn.softmax(logits / self.temperature, axis=-1)
        return {PROBABILITIES_OUTPUT: probabilities, OOD_OUTPUT: self._ood_score(features)}

    def _serve_with_context(self, image: tf.Tensor, age_years: tf.Tensor, sex: tf.Tensor,
                            site: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._serve(image, age_years, sex, site)

    def _explain_with_context(self, image: tf.Tensor, class_index: tf.Tensor,
                              age_years: tf.Tensor, sex: tf.Tensor,
                              site: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._explain(image, class_index, age_years, sex, site)

    def _ood_score(self, features: tf.Tensor) -> tf.Tensor:
        residual = tf.zeros(tf.shape(features)[:1], tf.float32)
        if self.has_projection:
            features, residual = project_features(features, self.feature_centre,
                                                  self.feature_projection, self.residual_variance)
        if not self.has_statistics:
            return residual  # zeros
        squared = mahalanobis_min_squared(features, self.class_means, self.precision)
        return tf.sqrt(tf.maximum(squared + residual, 0.0))

    def _explain(self, image: tf.Tensor, class_index: tf.Tensor,
                 *context: tf.Tensor) -> dict[str, tf.Tensor]:
        """Grad-CAM of the class score: the network's logit (for an ensemble, the members' mean
        log-probability, which is what its logits output holds); the temperature only scales
        it, which normalisation removes."""
        scaled = _scaled(image)
        with tf.GradientTape() as tape:
            # Watching the input records every op after it, so the maps (intermediate tensors)
            # have gradients whatever the variables' trainable flags or storage dtype.
            tape.watch(scaled)
            logits, features, *feature_maps = self.network(_joined(scaled, context),
                                                           training=False)
            top = tf.argmax(logits, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_index < 0, top, class_index)
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        gradients = tape.gradient(score, feature_maps)
        return {HEATMAP_OUTPUT: grad_cam(feature_maps, gradients),
                PROBABILITIES_OUTPUT: tf.nn.softmax(logits / self.temperature, axis=-1),
                OOD_OUTPUT: self._ood_score(features), CLASS_INDEX_OUTPUT: chosen}

    def _metadata(self, probe: tf.Tensor) -> dict[str, tf.Tensor]:
        count = tf.shape(probe)[0]
        return {LABELS_OUTPUT: tf.tile(self.labels[None, :], [count, 1]),
                CONFIG_OUTPUT: tf.fill([count], self.config_json)}


def _scaled(image: tf.Tensor) -> tf.Tensor:
    """The uint8 model input scaled to [-1, 1], the scale the networks train on (train.py)."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _joined(scaled: tf.Tensor, context: tuple[tf.Tensor, ...]) -> Any:
    """The network's input: the scaled image, then the context inputs if the network takes them."""
    return [scaled, *context] if context else scaled


def save_version(module: ServingModule, config: ModelConfig, version_dir: Path) -> None:
    """Write the SavedModel and its config into `version_dir` (which must not exist yet)."""
    tf.saved_model.save(module, str(version_dir), signatures=module.signatures())
    config.write(version_dir)


def build_tiny_network(config: ModelConfig, seed: int = 0) -> Any:
    """A deterministic stand-in network (pooled colours -> a 4x4 convolutional feature map ->
    linear logits) for tests and demos; the map gives it an `explain` signature. It has the real
    contract but no skill: never ship it as a diagnosis model."""
    import keras

    from dermserve.trainer.network import FEATURES_LAYER

    inputs = keras.Input((config.input.height, config.input.width, 3))
    # Average pooling, not area resizing: ResizeArea has no gradient, which Grad-CAM needs.
    pool = (max(1, config.input.height // 8), max(1, config.input.width // 8))
    colours = keras.layers.AveragePooling2D(pool)(inputs)
    initializer = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    feature_map = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu",
                                      kernel_initializer=initializer, bias_initializer="ones",
                                      name="tiny_conv")(colours)
    pooled = keras.layers.Flatten(name=FEATURES_LAYER)(feature_map)
    logits = keras.layers.Dense(len(config.labels), kernel_initializer=initializer)(pooled)
    return keras.Model(inputs, [logits, pooled])


def export_tiny_version(version_dir: Path, config: ModelConfig, seed: int = 0,
                        with_statistics: bool = True, explain: bool = True) -> None:
    """Export a tiny version (see build_tiny_network) at `version_dir`; without `explain`, as
    versions exported before the `explain` signature existed."""
    network = build_tiny_network(config, seed)
    statistics = None
    if with_statistics:
        rng = np.random.default_rng(seed)
        sample = rng.uniform(-1, 1, (64, config.input.height, config.input.width, 3))
        _, features = network(sample.astype(np.float32), training=False)
        labels = rng.integers(0, len(config.labels), 64)
        statistics = FeatureStatistics.fit(np.asarray(features), labels, len(config.labels))
    save_version(ServingModule(network, config, statistics, explain=explain), config, version_dir)
