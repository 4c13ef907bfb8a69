"""The two-origin network (trainer/two_origin.py says what it is and why): a published
version's network and the sklesion Xception combined in one Keras graph, and the same rebuilt
with every member's feature map for Grad-CAM. Apart from the command that builds and publishes it
(trainer/two_origin.py) so that the export, which needs only the network, does not import the
pipeline that calls it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

TWO_ORIGIN_NAME = "dermserve_two_origin"
SKLESION_NAME = "sklesion"
SKLESION_SIZE = 254  # pixels, square: sklesion's input
SKLESION_BACKBONE = "xception"
SKLESION_FEATURE_MAP = "block14_sepconv2_act"  # the Xception's last convolutional activation
NEUTRAL_CONTEXT = np.array([0, 0, 1,            # sex: unknown
                            0, 0, 0, 0, 1,      # body site: unknown
                            51.90180032733224 / 90.0, 1.0], np.float32)
"""sklesion's metadata vector for an image without context (its `model_props.pkl`): the one-hot
'unknown' sex and site, and a missing age (its mean over its maximum, and the missing flag)."""


SKLESION_SEXES = ("female", "male", "unknown")
SKLESION_SITES = ("arm", "head-or-neck", "leg-or-genital", "trunk", "unknown")
SKLESION_AGE_MEAN = 51.90180032733224  # years: its training set's mean, for a missing age
SKLESION_AGE_MAX = 90.0  # years: its scale (age / 90)
SITE_GROUPS = {
    "arm": ("upper extremity", "hand"),
    "head-or-neck": ("head/neck", "face", "scalp", "neck", "ear"),
    "leg-or-genital": ("lower extremity", "foot", "genital"),
    "trunk": ("trunk", "back", "abdomen", "chest", "anterior torso", "posterior torso",
              "lateral torso"),
}
"""The body sites HAM10000 (`localization`) and ISIC 2019 (`anatom_site_general`) record, in
sklesion's five groups (its `model_props.pkl` one-hot map). A site that spans groups or none
(acral, palms/soles, oral/genital, unknown) is "unknown", as sklesion's own data has it."""


def site_group(site: str) -> str:
    name = site.strip().lower()
    return next((group for group, sites in SITE_GROUPS.items() if name in sites), "unknown")


def sklesion_context(age: float | None, sex: str, site: str) -> np.ndarray:
    """sklesion's metadata vector: one-hot sex and site group, age over 90 and a missing flag
    (a missing age is its training mean, as its own preprocessing does)."""
    sex_name = sex.strip().lower() if sex.strip().lower() in SKLESION_SEXES else "unknown"
    missing = age is None
    years = SKLESION_AGE_MEAN if age is None else float(age)
    return np.array([*(float(sex_name == s) for s in SKLESION_SEXES),
                     *(float(site_group(site) == g) for g in SKLESION_SITES),
                     years / SKLESION_AGE_MAX, float(missing)], np.float32)


def site_group_codes() -> np.ndarray:
    """int32 [1 + sites]: the index in SKLESION_SITES of each `site` input code (0 unknown, then
    core.context.AnatomicSite's codes), so that the graph maps a served site as `site_group`
    maps its name."""
    from dermserve.core.context import SITE_CODES

    table = [SKLESION_SITES.index("unknown")] * (1 + len(SITE_CODES))
    for site, code in SITE_CODES.items():
        table[code] = SKLESION_SITES.index(site_group(site.value))
    return np.array(table, np.int32)


def context_vector(age_years: Any, sex: Any, site: Any) -> Any:
    """`sklesion_context` in the graph, from the served context inputs (docs/model-contract.md:
    age -1 unknown, sex 1 female / 2 male / else unknown, site codes; a code outside the table is
    unknown): float32 [N, 10]."""
    from keras import ops

    from dermserve.core.context import SEX_CODES, Sex

    sex_index = ops.where(ops.equal(sex, SEX_CODES[Sex.FEMALE]), 0,
                          ops.where(ops.equal(sex, SEX_CODES[Sex.MALE]), 1, 2))
    table = ops.convert_to_tensor(site_group_codes())
    known = ops.logical_and(ops.greater_equal(site, 0), ops.less(site, table.shape[0]))
    group = ops.where(known, ops.take(table, ops.where(known, site, 0)),
                      SKLESION_SITES.index("unknown"))
    missing = ops.less(age_years, 0.0)
    years = ops.where(missing, SKLESION_AGE_MEAN, age_years) / SKLESION_AGE_MAX
    return ops.concatenate([ops.one_hot(sex_index, len(SKLESION_SEXES)),
                            ops.one_hot(group, len(SKLESION_SITES)),
                            ops.expand_dims(years, -1),
                            ops.expand_dims(ops.cast(missing, "float32"), -1)], axis=-1)


def context_inputs() -> list[Any]:
    """Keras inputs named and typed as the served context inputs, in CONTEXT_INPUTS order."""
    import keras

    from dermserve.core.context import CONTEXT_INPUT_DTYPES, CONTEXT_INPUTS

    return [keras.Input((), dtype=CONTEXT_INPUT_DTYPES[name], name=name)
            for name in CONTEXT_INPUTS]


def network_takes_context(network: Any) -> bool:
    """Whether a network of the contract takes the context inputs after the image."""
    return len(network.inputs) > 1


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


def sklesion_branch(model: Any, spec_side: int, with_context: bool = False) -> Any:
    """A Keras model `images (N, side, side, 3) in [-1, 1] -> [probabilities (N, 7), feature map
    (N, 8, 8, 2048)]`: sklesion (`model`, as loaded from its model.keras) on the images resized
    to its 254x254, sharing its layers. Its metadata vector is the neutral one, or, `with_context`,
    `context_vector` of three more inputs (`context_inputs`)."""
    import keras
    from keras import ops

    xception = model.get_layer(SKLESION_BACKBONE)
    with_map = keras.Model(xception.inputs,
                           [xception.output, xception.get_layer(SKLESION_FEATURE_MAP).output],
                           name=f"{SKLESION_BACKBONE}_with_map")
    images = keras.Input((spec_side, spec_side, 3), name="image")
    pixels = keras.layers.Resizing(SKLESION_SIZE, SKLESION_SIZE, interpolation="bilinear",
                                   name="sklesion_resize")((images + 1.0) * 127.5)
    served_context = context_inputs() if with_context else []
    context = (context_vector(*served_context) if with_context else
               ops.zeros_like(images[:, 0, 0, :1]) + ops.convert_to_tensor(NEUTRAL_CONTEXT))
    feature_map: list[Any] = []

    def backbone(tensor: Any) -> Any:
        pooled, last_map = with_map(tensor)
        feature_map.append(last_map)
        return pooled

    wired = _wired(model, {SKLESION_BACKBONE: backbone}, [pixels, context])
    probabilities = wired[model.layers[-1].name]
    return keras.Model([images, *served_context] if with_context else images,
                       [probabilities, feature_map[0]], name=SKLESION_NAME)


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
    `version`'s outputs). When `sklesion` takes the context inputs, so does the network, after
    the image."""
    import keras
    from keras import ops

    inputs = keras.Input(tuple(version.inputs[0].shape[1:]), name="image")
    context = context_inputs() if network_takes_context(sklesion) else []
    logits, features, *version_maps = version(inputs, training=False)
    probabilities, sklesion_map = sklesion([inputs, *context] if context else inputs,
                                           training=False)
    log_priors = ops.convert_to_tensor(np.log(np.asarray(mixing.priors, np.float32)))
    corrected = ops.log(ops.clip(probabilities, 1e-7, 1.0)) - log_priors
    combined = ((1.0 - mixing.weight) * ops.log_softmax(logits, axis=-1)
                + mixing.weight * ops.log_softmax(corrected, axis=-1))
    outputs = [combined, features]
    if feature_maps:
        outputs += [*version_maps, sklesion_map]
    network = keras.Model([inputs, *context] if context else inputs, outputs,
                          name=TWO_ORIGIN_NAME)
    network.mixing = mixing  # what two_origin_with_feature_maps rebuilds it with
    return network


def two_origin_with_feature_maps(network: Any) -> Any | None:
    """A two-origin network rebuilt over the same layers with every member's last feature map as
    extra outputs (for Grad-CAM); None if `network` is not one."""
    from dermserve.trainer.ensemble_network import ENSEMBLE_NAME, ensemble_with_feature_maps

    if getattr(network, "name", None) != TWO_ORIGIN_NAME:
        return None
    version = ensemble_with_feature_maps(network.get_layer(ENSEMBLE_NAME))
    if version is None:
        return None
    return two_origin_network(version, network.get_layer(SKLESION_NAME), network.mixing,
                              feature_maps=True)
