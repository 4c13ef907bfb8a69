"""A two-origin model in one network: a published dermserve version and the sklesion Xception.

Models trained elsewhere fail differently at other clinics, so their combination holds up better
there than either member (BCN-84, `docs/trainer.md`). The combined network keeps the contract of
`trainer.network` (`images in [-1, 1] -> [logits, features]`), so the usual pipeline calibrates,
thresholds, exports and publishes it, and TF Serving, the embedded backend, Explain and the worker
all serve the same graph:

    logits = (1 - w) * log_softmax(version's logits) + w * log(P_sklesion / priors)

softmax of which is the weighted, normalised geometric mean of the version's probabilities and
sklesion's probabilities divided by its training priors (HAM10000's class frequencies: sklesion's
probabilities follow them, and dividing by them is what balanced accuracy rewards). `w` is 0.5 (a
plain geometric mean, chosen before any measurement); `--sklesion-weight` changes it, and any other
weight must be chosen on validation only.

- The version's members are rebuilt from its stored variables (`rebuild_version_network`) and
  checked against its recorded sample predictions, so no training workdir is needed.
- sklesion sees the model input resized in the graph to its 254x254 and its neutral metadata
  vector (unknown sex and site, missing age), as `trainer.sklesion` measured it.
- The features (for the OOD score) are the version's members', as before.
- Explain: Grad-CAM of the combined score, on each member's last feature map (the MobileNetV2
  members' and the Xception's), averaged as for an ensemble (`trainer.export.grad_cam`).

sklesion is never downloaded at run time: fetch the wheel once at training time
(`pip download --no-deps sklesion==0.2.2`, unzip) and pass `--sklesion-model
sklesion/model.keras`.

    python -m trainer.two_origin --version-dir models/ham10000/3 \\
        --sklesion-model var/sklesion/sklesion/model.keras <dermserve-train flags>
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import VersionMismatch
from trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

TWO_ORIGIN_NAME = "dermserve_two_origin"
SKLESION_NAME = "sklesion"
SKLESION_SIZE = 254  # pixels, square: sklesion's input
SKLESION_BACKBONE = "xception"
SKLESION_FEATURE_MAP = "block14_sepconv2_act"  # the Xception's last convolutional activation
DEFAULT_SKLESION_WEIGHT = 0.5
"""sklesion's share of the geometric mean: equal shares, fixed before any measurement."""
NEUTRAL_CONTEXT = np.array([0, 0, 1,            # sex: unknown
                            0, 0, 0, 0, 1,      # body site: unknown
                            51.90180032733224 / 90.0, 1.0], np.float32)
"""sklesion's metadata vector for an image without context (its `model_props.pkl`): the one-hot
'unknown' sex and site, and a missing age (its mean over its maximum, and the missing flag)."""
REPRODUCE_TOLERANCE = 1e-4  # largest probability difference a rebuilt version may show


def _wired(model: Any, replacements: dict[str, Any], inputs: list[Any]) -> dict[str, Any]:
    """Call `model`'s layers on `inputs` in its own order, calling `replacements[name]` in place
    of the layer `name`; returns every layer's output by name."""
    config = model.get_config()
    input_names = [tensor._keras_history.operation.name for tensor in model.inputs]
    outputs: dict[str, Any] = dict(zip(input_names, inputs, strict=True))
    for layer in config["layers"]:
        if not layer["inbound_nodes"]:
            continue
        args = layer["inbound_nodes"][0]["args"]
        arguments = [_resolved(arg, outputs) for arg in args]
        call = replacements.get(layer["name"], model.get_layer(layer["name"]))
        outputs[layer["name"]] = call(*arguments)
    return outputs


def _resolved(arg: Any, outputs: dict[str, Any]) -> Any:
    if isinstance(arg, list):
        return [_resolved(item, outputs) for item in arg]
    name, _, index = arg["config"]["keras_history"]
    value = outputs[name]
    return value[index] if isinstance(value, (list, tuple)) else value


def sklesion_branch(model: Any, spec_side: int) -> Any:
    """A Keras model `images (N, side, side, 3) in [-1, 1] -> [probabilities (N, 7), feature map
    (N, 8, 8, 2048)]`: sklesion (`model`, as loaded from its model.keras) on the images resized
    to its 254x254, with the neutral metadata vector, sharing its layers."""
    import keras
    from keras import ops

    xception = model.get_layer(SKLESION_BACKBONE)
    with_map = keras.Model(xception.inputs,
                           [xception.output, xception.get_layer(SKLESION_FEATURE_MAP).output],
                           name=f"{SKLESION_BACKBONE}_with_map")
    images = keras.Input((spec_side, spec_side, 3), name="image")
    pixels = keras.layers.Resizing(SKLESION_SIZE, SKLESION_SIZE, interpolation="bilinear",
                                   name="sklesion_resize")((images + 1.0) * 127.5)
    context = ops.zeros_like(images[:, 0, 0, :1]) + ops.convert_to_tensor(NEUTRAL_CONTEXT)
    feature_map: list[Any] = []

    def backbone(tensor: Any) -> Any:
        pooled, last_map = with_map(tensor)
        feature_map.append(last_map)
        return pooled

    wired = _wired(model, {SKLESION_BACKBONE: backbone}, [pixels, context])
    probabilities = wired[model.layers[-1].name]
    return keras.Model(images, [probabilities, feature_map[0]], name=SKLESION_NAME)


@dataclasses.dataclass(frozen=True)
class Mixing:
    """How the two origins are combined: sklesion's share and its training priors."""

    weight: float
    priors: tuple[float, ...]


def two_origin_network(version: Any, sklesion: Any, mixing: Mixing,
                       feature_maps: bool = False) -> Any:
    """`version` (an ensemble or one network of the contract) and `sklesion` (a
    `sklesion_branch`) combined as the module docstring says; with `feature_maps`, every
    member's last feature map follows logits and features (the version's maps must then be among
    `version`'s outputs)."""
    import keras
    from keras import ops

    inputs = keras.Input(tuple(version.inputs[0].shape[1:]), name="image")
    logits, features, *version_maps = version(inputs, training=False)
    probabilities, sklesion_map = sklesion(inputs, training=False)
    log_priors = ops.convert_to_tensor(np.log(np.asarray(mixing.priors, np.float32)))
    corrected = ops.log(ops.clip(probabilities, 1e-7, 1.0)) - log_priors
    combined = ((1.0 - mixing.weight) * ops.log_softmax(logits, axis=-1)
                + mixing.weight * ops.log_softmax(corrected, axis=-1))
    outputs = [combined, features]
    if feature_maps:
        outputs += [*version_maps, sklesion_map]
    network = keras.Model(inputs, outputs, name=TWO_ORIGIN_NAME)
    network.mixing = mixing  # what two_origin_with_feature_maps rebuilds it with
    return network


def two_origin_with_feature_maps(network: Any) -> Any | None:
    """A two-origin network rebuilt over the same layers with every member's last feature map as
    extra outputs (for Grad-CAM); None if `network` is not one."""
    from trainer.ensemble import ENSEMBLE_NAME, ensemble_with_feature_maps

    if getattr(network, "name", None) != TWO_ORIGIN_NAME:
        return None
    version = ensemble_with_feature_maps(network.get_layer(ENSEMBLE_NAME))
    if version is None:
        return None
    return two_origin_network(version, network.get_layer(SKLESION_NAME), network.mixing,
                              feature_maps=True)


def rebuild_version_network(version_dir: Path, settings: TrainSettings, num_classes: int) -> Any:
    """The ensemble a published version serves, as a Keras network, with the version's stored
    (possibly float16) variables; refuses one that does not reproduce the version's sample."""
    import tensorflow as tf

    from trainer.ensemble import ensemble_network
    from trainer.export import explainable_network
    from trainer.network import build_network

    stored = tf.saved_model.load(str(version_dir)).network

    def member(position: int) -> Any:
        return build_network(num_classes, settings.input_spec(), settings.backbone, None,
                             settings.dropout, settings.seed + position,
                             settings.colour_constancy, name=f"member_{position}")

    per_member = len(member(0).trainable_variables)
    count = len(stored.trainable) // per_member
    ensemble = ensemble_network([member(i) for i in range(count)])
    exported = explainable_network(ensemble) or ensemble  # the variable order the export saved
    _assign(exported.trainable_variables, stored.trainable)
    _assign(exported.non_trainable_variables, stored.non_trainable)
    logger.info("rebuilt %d members of %s", count, version_dir)
    return ensemble


def _assign(variables: Sequence[Any], stored: Sequence[Any]) -> None:
    if len(variables) != len(stored):
        raise VersionMismatch(f"{len(stored)} stored variables, {len(variables)} rebuilt")
    for variable, value in zip(variables, stored, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise VersionMismatch(f"{variable.path}: stored shape {tuple(value.shape)}, "
                                  f"rebuilt {tuple(variable.shape)}")
        variable.assign(np.asarray(value, np.float32))


def check_reproduces(network: Any, version_dir: Path, data_dir: Path) -> float:
    """The largest difference between the rebuilt network's calibrated probabilities and the
    version's recorded sample predictions (refused above REPRODUCE_TOLERANCE)."""
    from core.model_config import ModelConfig
    from trainer.calibration import softmax
    from trainer.data import load_records
    from trainer.publish import SamplePredictions
    from trainer.train import predict_network

    config = ModelConfig.read(version_dir)
    sample = SamplePredictions.read(version_dir)
    by_id = {record.image_id: record for record in load_records(data_dir)}
    records = [by_id[image_id] for image_id in sample.image_ids]
    logits, _ = predict_network(network, records, config.input)
    gap = float(np.abs(softmax(logits, config.temperature)
                       - np.asarray(sample.probabilities)).max())
    if gap > REPRODUCE_TOLERANCE:
        raise VersionMismatch(f"the rebuilt {version_dir} differs from its recorded sample "
                              f"predictions by {gap:.2e}")
    logger.info("rebuilt %s reproduces its sample predictions (max difference %.1e)",
                version_dir, gap)
    return gap


def two_origin_hooks(version_dir: Path, sklesion_model: Path, weight: float) -> Any:
    """Pipeline hooks whose `train` returns the two-origin network (nothing is trained)."""
    from trainer.pipeline import NetworkHooks
    from trainer.sklesion import ham_priors
    from trainer.train import configure_threads, predict_network

    def train(split: Any, settings: TrainSettings, workdir: Path) -> Any:
        import keras

        configure_threads(settings.threads)
        assert settings.data_dir is not None
        version = rebuild_version_network(version_dir, settings, len(split.labels))
        check_reproduces(version, version_dir, settings.data_dir)
        sklesion = keras.models.load_model(sklesion_model, compile=False)
        mixing = Mixing(weight, tuple(float(p) for p in ham_priors(settings.data_dir)))
        return two_origin_network(version, sklesion_branch(sklesion, settings.input_size),
                                  mixing)

    name = (f"two-origin: version {version_dir.name} of {version_dir.parent.name} and "
            f"sklesion 0.2.2 (Xception, prior-corrected), geometric mean with sklesion's "
            f"share {weight:g}")
    return NetworkHooks(train, predict_network, name)


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.cli import LOG_FORMAT, build_parser, run_pipeline, settings_from

    parser = build_parser()
    parser.prog = "python -m trainer.two_origin"
    parser.add_argument("--version-dir", type=Path, required=True,
                        help="the published version whose members join sklesion")
    parser.add_argument("--sklesion-model", type=Path, required=True,
                        help="sklesion's model.keras (from its wheel, fetched at training time)")
    parser.add_argument("--sklesion-weight", type=float, default=DEFAULT_SKLESION_WEIGHT,
                        help="sklesion's share of the geometric mean, in (0, 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    if not 0.0 < args.sklesion_weight < 1.0:
        parser.error("--sklesion-weight must be in (0, 1)")
    try:
        settings = dataclasses.replace(settings_from(args), weights_path=None)
    except ValueError as exc:
        parser.error(str(exc))
    return run_pipeline(settings, two_origin_hooks(args.version_dir, args.sklesion_model,
                                                   args.sklesion_weight))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
