"""The classification network: `float images in [-1, 1] (N, H, W, 3) -> (logits, pooled features)`,
the contract `trainer.export.ServingModule` wraps.

A Keras application backbone (MobileNetV2 by default, its ImageNet weights read from a file, never
downloaded) is inlined into one functional graph with a global-average-pooled feature vector and a
dropout + dense head. Inlining (rather than nesting the backbone as one layer) lets training cut the
graph at any layer: `lower_model` (frozen, run once to cache activations) and `upper_model` (the
top blocks and the head, trained on the cache) share their layers with the full network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermserve.core.model_config import InputSpec
from dermserve.trainer.settings import COLOUR_CONSTANCY_MODES

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_DROPOUT = 0.3  # on the pooled features: the head sees ~7,000 images, so regularise it
FEATURES_LAYER = "features"
DROPOUT_LAYER = "head_dropout"
LOGITS_LAYER = "logits"
TINY_BACKBONE = "tiny"
"""A two-convolution stand-in backbone for tests: the real graph shape, no skill, no weights."""
COLOUR_LAYER = "shades_of_gray"
SHADES_OF_GRAY_POWER = 6.0
"""The Minkowski norm of Shades of Gray (Finlayson and Trezzi, 2004); p = 6 is what the ISIC
2018/2019 leaders used to take the clinic's light and camera out of dermoscopy colours."""
MAX_COLOUR_GAIN = 3.0
"""Per-channel gains are clipped to [1/x, x]: a nearly one-coloured image must not be blown up."""


def _applications() -> dict[str, Callable[..., Any]]:
    import keras

    apps = keras.applications
    return {
        "mobilenet_v2": apps.MobileNetV2,
        "mobilenet_v3_small": apps.MobileNetV3Small,
        "mobilenet_v3_large": apps.MobileNetV3Large,
        "efficientnet_b0": apps.EfficientNetB0,
        "efficientnet_v2_b0": apps.EfficientNetV2B0,
        "resnet50": apps.ResNet50,
        "densenet121": apps.DenseNet121,
    }


def backbone_names() -> tuple[str, ...]:
    """The selectable backbone names (MobileNetV2's weights are the only ones shipped offline)."""
    return (*_applications(), TINY_BACKBONE)


def _tiny_backbone(inputs: Any) -> Any:
    import keras

    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="tiny_conv1")(inputs)
    x = keras.layers.BatchNormalization(name="tiny_bn1")(x)
    x = keras.layers.ReLU(name="tiny_relu1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="tiny_conv2")(x)
    x = keras.layers.BatchNormalization(name="tiny_bn2")(x)
    return keras.layers.ReLU(name="tiny_relu2")(x)


def shades_of_gray(images: Any, power: float = SHADES_OF_GRAY_POWER,
                   max_gain: float = MAX_COLOUR_GAIN) -> Any:
    """Shades of Gray colour constancy in the graph, per image, on `[-1, 1]` inputs: each channel
    is divided by its Minkowski p-norm mean (the estimate of the light's colour) and scaled back to
    the image's mean level, so a grey-beige ISIC frame and a pink HAM10000 frame of the same lesion
    reach the backbone alike. keras.ops only: it runs under TensorFlow and JAX, and since it is
    part of the network, training, the SavedModel, TF Serving and the embedded backend share it."""
    from keras import ops

    unit = (images + 1.0) * 0.5
    eps = 1e-6
    light = ops.power(ops.mean(ops.power(ops.maximum(unit, eps), power), axis=(1, 2),
                               keepdims=True), 1.0 / power)                  # [N, 1, 1, 3]
    gain = ops.mean(light, axis=-1, keepdims=True) / ops.maximum(light, eps)
    gain = ops.clip(gain, 1.0 / max_gain, max_gain)
    return ops.clip(unit * gain, 0.0, 1.0) * 2.0 - 1.0


def _colour_layer(inputs: Any, mode: str) -> Any:
    import keras

    if mode == "none":
        return inputs
    if mode != "shades_of_gray":
        raise ValueError(f"unknown colour constancy {mode!r}; choose one of "
                         f"{COLOUR_CONSTANCY_MODES}")
    return keras.layers.Lambda(shades_of_gray, name=COLOUR_LAYER)(inputs)


def _backbone_output(inputs: Any, backbone: str, weights_path: Path | None) -> Any:
    """The backbone's last feature map, its layers inlined into the graph of `inputs`."""
    if backbone == TINY_BACKBONE:
        return _tiny_backbone(inputs)
    factories = _applications()
    if backbone not in factories:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {backbone_names()}")
    # Other backbones' ImageNet weights are not available offline: random init unless a file is
    # given. Keras' applications take a weights *path* and never download when one is passed.
    weights = str(weights_path) if weights_path is not None else None
    model = factories[backbone](include_top=False, weights=weights, input_tensor=inputs)
    logger.info("backbone %s with %s", backbone, weights or "random initialisation")
    return model.output


def build_network(num_classes: int, spec: InputSpec, backbone: str = DEFAULT_BACKBONE,
                  weights_path: Path | None = None, dropout: float = DEFAULT_DROPOUT,
                  seed: int = 0, colour_constancy: str = "none", name: str | None = None) -> Any:
    """Return a keras.Model `(N, H, W, 3) float in [-1, 1] -> [logits (N, K), features (N, D)]`,
    with `colour_constancy` ("shades_of_gray") applied in the graph before the backbone."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((spec.height, spec.width, 3), name="image")
    feature_map = _backbone_output(_colour_layer(inputs, colour_constancy), backbone, weights_path)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(feature_map)
    dropped = keras.layers.Dropout(dropout, seed=seed, name=DROPOUT_LAYER)(features)
    initializer = keras.initializers.GlorotUniform(seed=seed)
    logits = keras.layers.Dense(num_classes, kernel_initializer=initializer,
                                name=LOGITS_LAYER)(dropped)
    return keras.Model(inputs, [logits, features], name=name or f"dermserve_{backbone}")


def with_feature_map(network: Any) -> Any | None:
    """`network` (this module's contract) with one more output, the last convolutional feature
    map (the tensor its `features` layer pools): `[logits, features, feature map (N, h, w, C)]`,
    sharing its layers and variables, for Grad-CAM. None when no layer is named `features`."""
    import keras

    try:
        pooling = network.get_layer(FEATURES_LAYER)
    except ValueError:
        return None
    return keras.Model(network.inputs, [*network.outputs[:2], pooling.input], name=network.name)


def cut_tensor(network: Any, first_trainable: str) -> Any:
    """The tensor entering layer `first_trainable`: where the frozen part of the graph ends."""
    layer = network.get_layer(first_trainable)
    return layer.input


def lower_model(network: Any, first_trainable: str) -> Any:
    """`images -> activations at the cut`: the frozen lower part, run once to fill the cache."""
    import keras

    return keras.Model(network.inputs, cut_tensor(network, first_trainable))


def upper_model(network: Any, first_trainable: str) -> Any:
    """`activations at the cut -> [logits, features]`, sharing its layers with `network`."""
    import keras

    return keras.Model(cut_tensor(network, first_trainable), network.outputs)


def head_model(network: Any) -> Any:
    """`pooled features -> logits` (dropout + dense), sharing its layers with `network`."""
    import keras

    width = network.get_layer(FEATURES_LAYER).output.shape[-1]
    pooled = keras.Input((width,), name="pooled")
    dropped = network.get_layer(DROPOUT_LAYER)(pooled)
    return keras.Model(pooled, network.get_layer(LOGITS_LAYER)(dropped))


def set_trainable(network: Any, first_trainable: str | None) -> list[str]:
    """Freeze every layer before `first_trainable` (None: train only the head) and every
    BatchNormalization layer, which then runs in inference mode: batches of 64 on a CPU give
    noisy statistics, and frozen ImageNet statistics fine-tune more stably.
    Returns the names of the layers with trainable weights."""
    import keras

    names = [layer.name for layer in network.layers]
    start = names.index(first_trainable) if first_trainable else names.index(FEATURES_LAYER)
    trainable = []
    for position, layer in enumerate(network.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = position >= start and not is_bn
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable


def set_all_trainable(network: Any, batchnorm_momentum: float | None) -> list[str]:
    """Train every layer. With a `batchnorm_momentum`, BatchNormalization too: in training mode,
    its statistics following the fine-tuned weights at that momentum (Keras' default 0.999
    follows too slowly for a run of a few epochs); with None, BatchNormalization stays frozen in
    inference mode on its ImageNet statistics, so training starts exactly where the head left
    off. Returns the names of the layers with trainable weights."""
    import keras

    trainable = []
    for layer in network.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not is_bn or batchnorm_momentum is not None
        if is_bn and batchnorm_momentum is not None:
            layer.momentum = batchnorm_momentum
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable
