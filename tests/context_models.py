"""A tiny real SavedModel whose `serving_default` and `explain` take the patient context inputs
(docs/model-contract.md), and whose answer shows which context arrived.

Its logits are the image's mean brightness on every class, plus: "mel" the age in years over
10 (an unknown age, -1, gives -0.1), "nv" the sex code (0 unknown, 1 female, 2 male) and "bkl"
the site code over 4. So a test reads the values that reached the model back from the
probabilities (`received`), whichever entry point sent them. Its `explain` answers the same
probabilities and a flat 2x2 heatmap (a Grad-CAM test would use tests/explain_models.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import TINY_INPUT, TINY_MODEL_NAME, tiny_config

AGE_CLASS, SEX_CLASS, SITE_CLASS = "mel", "nv", "bkl"
AGE_SCALE = 10.0  # years per unit of logit
SITE_SCALE = 4.0  # site codes per unit of logit


def export_context_version(base: Path, version: int) -> Path:
    """Export the context network as version `version` of TINY_MODEL_NAME under `base`."""
    import tensorflow as tf

    config = tiny_config(version)
    labels = config.labels
    config_json = config.to_json()  # outside the graph: autograph cannot convert json
    image_spec = tf.TensorSpec([None, TINY_INPUT.height, TINY_INPUT.width, 3], tf.uint8,
                               name="image")

    context_specs = [tf.TensorSpec([None], tf.float32, "age_years"),
                     tf.TensorSpec([None], tf.int32, "sex"),
                     tf.TensorSpec([None], tf.int32, "site")]

    class ContextModule(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[image_spec, *context_specs])
        def serve(self, image: tf.Tensor, age_years: tf.Tensor, sex: tf.Tensor,
                  site: tf.Tensor) -> dict[str, tf.Tensor]:
            brightness = tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2, 3]) / 255.0
            columns = [brightness] * len(labels)
            columns[labels.index(AGE_CLASS)] += age_years / AGE_SCALE
            columns[labels.index(SEX_CLASS)] += tf.cast(sex, tf.float32)
            columns[labels.index(SITE_CLASS)] += tf.cast(site, tf.float32) / SITE_SCALE
            logits = tf.stack(columns, axis=1)
            return {"probabilities": tf.nn.softmax(logits, axis=-1),
                    "ood_score": tf.zeros_like(brightness)}

        @tf.function(input_signature=[image_spec, tf.TensorSpec([None], tf.int32, "class_index"),
                                      *context_specs])
        def explain(self, image: tf.Tensor, class_index: tf.Tensor, age_years: tf.Tensor,
                    sex: tf.Tensor, site: tf.Tensor) -> dict[str, tf.Tensor]:
            served = self.serve(image, age_years, sex, site)
            top = tf.argmax(served["probabilities"], axis=-1, output_type=tf.int32)
            return {**served, "heatmap": tf.ones([tf.shape(image)[0], 2, 2]),
                    "class_index": tf.where(class_index < 0, top, class_index)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="probe")])
        def metadata(self, probe: tf.Tensor) -> dict[str, tf.Tensor]:
            count = tf.shape(probe)[0]
            return {"labels": tf.tile(tf.constant(list(labels))[None, :], [count, 1]),
                    "config": tf.fill([count], tf.constant(config_json))}

    module = ContextModule()
    version_dir = base / TINY_MODEL_NAME / str(version)
    tf.saved_model.save(module, str(version_dir), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "explain": module.explain.get_concrete_function(),
        "metadata": module.metadata.get_concrete_function()})
    config.write(version_dir)
    return version_dir


def received(probabilities: dict[str, float]) -> tuple[float, int, int]:
    """(age, sex code, site code) the model was given, read back from its probabilities by
    label: each context logit over a plain class's logit (the brightness cancels)."""
    plain = next(label for label in probabilities if label not in (AGE_CLASS, SEX_CLASS,
                                                                      SITE_CLASS))

    def shift(label: str) -> float:
        return float(np.log(probabilities[label] / probabilities[plain]))

    return (round(shift(AGE_CLASS) * AGE_SCALE, 2), round(shift(SEX_CLASS)),
            round(shift(SITE_CLASS) * SITE_SCALE))
