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
weight must be chosen on images neither member trained on. HAM10000 validation is not such a set
(sklesion's authors trained on HAM10000); `--choose-weight` with `--extra-holdout` picks `w` from
SKLESION_WEIGHT_CHOICES on the held-out half of the extra training source (ISIC 2017 train), by
balanced accuracy over the classes present there, ties broken by melanoma AUC and then by the
share nearest 0.5 (the rule fixed before any of it was measured).

- The version's members are rebuilt from its stored variables (`rebuild_version_network`) and
  checked against its recorded sample predictions, so no training workdir is needed.
- sklesion sees the model input resized in the graph to its 254x254 and its neutral metadata
  vector (unknown sex and site, missing age), as `trainer.research.sklesion` measured it.
- The features (for the OOD score) are the version's members', as before.
- Explain: Grad-CAM of the combined score, on each member's last feature map (the MobileNetV2
  members' and the Xception's), averaged as for an ensemble (`trainer.export.grad_cam`).

sklesion is never downloaded at run time: fetch the wheel once at training time
(`pip download --no-deps sklesion==0.2.2`, unzip) and pass `--sklesion-model
sklesion/model.keras`.

    python -m dermserve.trainer.two_origin --version-dir models/ham10000/3 \\
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

from dermserve.trainer.errors import VersionMismatch
from dermserve.trainer.settings import TrainSettings
from dermserve.trainer.two_origin_network import Mixing, sklesion_branch, two_origin_network

logger = logging.getLogger(__name__)

DEFAULT_SKLESION_WEIGHT = 0.5
SKLESION_WEIGHT_CHOICES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""The shares `--choose-weight` tries, fixed before any was measured."""
WEIGHT_CHOICE_FILE = "sklesion_weight.json"  # in the workdir: a resumed run reuses the choice
REPRODUCE_TOLERANCE = 1e-4  # largest probability difference a rebuilt version may show


def rebuild_version_network(version_dir: Path, settings: TrainSettings, num_classes: int) -> Any:
    """The ensemble a published version serves, as a Keras network, with the version's stored
    (possibly float16) variables; refuses one that does not reproduce the version's sample."""
    import tensorflow as tf

    from dermserve.core.model_config import ModelConfig
    from dermserve.trainer.ensemble_network import ensemble_network
    from dermserve.trainer.export import explainable_network
    from dermserve.trainer.network import build_network

    served = ModelConfig.read(version_dir).input
    if served != settings.input_spec():
        raise VersionMismatch(f"{version_dir} serves {served}, not {settings.input_spec()}: "
                              "pass its --input-size and --reference-pixels")
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
    from dermserve.core.model_config import ModelConfig
    from dermserve.trainer.calibration import softmax
    from dermserve.trainer.data import load_records
    from dermserve.trainer.publish import SamplePredictions
    from dermserve.trainer.train import predict_network

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


def weight_trials(version_logits: np.ndarray, sklesion_logits: np.ndarray, y: np.ndarray,
                  melanoma: int, choices: Sequence[float] = SKLESION_WEIGHT_CHOICES,
                  ) -> list[dict[str, float]]:
    """Balanced accuracy (argmax, classes present) and melanoma AUC of the mixture at each share:
    `sklesion_logits` are its prior-corrected log-probabilities (the network at share 1)."""
    from dermserve.trainer import metrics as m
    from dermserve.trainer.calibration import softmax

    shifted = version_logits - version_logits.max(axis=1, keepdims=True)
    version = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # log_softmax
    trials = []
    for weight in choices:
        combined = (1.0 - weight) * version + weight * sklesion_logits
        trials.append({"weight": float(weight),
                       "balanced_accuracy": m.balanced_accuracy(y, combined.argmax(axis=1),
                                                                combined.shape[1]),
                       "melanoma_auc": m.binary_auc(softmax(combined)[:, melanoma],
                                                    y == melanoma)})
    return trials


def best_weight(trials: Sequence[dict[str, float]]) -> float:
    """The module docstring's rule: balanced accuracy, then melanoma AUC, then nearest 0.5."""
    best = max(trials, key=lambda t: (t["balanced_accuracy"], t["melanoma_auc"],
                                      -abs(t["weight"] - DEFAULT_SKLESION_WEIGHT)))
    return best["weight"]


def choose_weight(version_dir: Path, sklesion_model: Path, settings: TrainSettings,
                  with_context: bool = False) -> float:
    """sklesion's share chosen on the held-out extra images (the module docstring's rule); the
    trials are written to the workdir and reused by a resumed run on the same images.
    `with_context`: sklesion is given the images' age, sex and site, as the served model will."""
    import json

    import keras

    from dermserve.trainer.data import HAM10000_LABELS, ham_priors, label_indices
    from dermserve.trainer.errors import DataError
    from dermserve.trainer.pipeline import extra_records
    from dermserve.trainer.train import configure_threads, predict_network

    holdout = extra_records(settings)[1]
    if not holdout or settings.data_dir is None:
        raise DataError("--choose-weight needs --data-dir, --extra-train-dir and --extra-holdout: "
                        "the held-out images choose the weight")
    ids = [record.image_id for record in holdout]
    path = settings.workdir / WEIGHT_CHOICE_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if (saved["image_ids"] == ids and saved["choices"] == list(SKLESION_WEIGHT_CHOICES)
                and saved.get("with_context", False) == with_context):
            logger.info("reusing the weight choice in %s: %g", path, saved["weight"])
            return float(saved["weight"])
    configure_threads(settings.threads)
    labels = list(HAM10000_LABELS)
    version = rebuild_version_network(version_dir, settings, len(labels))
    sklesion = sklesion_branch(keras.models.load_model(sklesion_model, compile=False),
                               settings.input_size, with_context=with_context)
    alone = two_origin_network(version, sklesion,
                               Mixing(1.0, tuple(float(p) for p in ham_priors(settings.data_dir))))
    spec = settings.input_spec()
    logger.info("choosing sklesion's weight on %d held-out images", len(holdout))
    trials = weight_trials(predict_network(version, holdout, spec)[0],
                           predict_network(alone, holdout, spec)[0],
                           label_indices(holdout, labels), labels.index("mel"))
    weight = best_weight(trials)
    for trial in trials:
        logger.info("sklesion weight %.1f: balanced accuracy %.4f, melanoma AUC %.4f",
                    trial["weight"], trial["balanced_accuracy"], trial["melanoma_auc"])
    settings.workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"weight": weight, "choices": list(SKLESION_WEIGHT_CHOICES),
                                "rule": "balanced accuracy, then melanoma AUC, then nearest 0.5",
                                "trials": trials, "with_context": with_context,
                                "image_ids": ids}, indent=1),
                    encoding="utf-8")
    logger.info("chose sklesion weight %g", weight)
    return weight


def two_origin_hooks(version_dir: Path, sklesion_model: Path, weight: float,
                     with_context: bool = False) -> Any:
    """Pipeline hooks whose `train` returns the two-origin network (nothing is trained).
    `with_context`: sklesion takes the patient's age, sex and site, and so does the exported
    version's serving_default and explain (see docs/model-contract.md)."""
    from dermserve.trainer.data import ham_priors
    from dermserve.trainer.pipeline import NetworkHooks
    from dermserve.trainer.train import configure_threads, predict_network

    def train(split: Any, settings: TrainSettings, workdir: Path) -> Any:
        import keras

        configure_threads(settings.threads)
        assert settings.data_dir is not None
        version = rebuild_version_network(version_dir, settings, len(split.labels))
        check_reproduces(version, version_dir, settings.data_dir)
        sklesion = keras.models.load_model(sklesion_model, compile=False)
        mixing = Mixing(weight, tuple(float(p) for p in ham_priors(settings.data_dir)))
        return two_origin_network(
            version, sklesion_branch(sklesion, settings.input_size, with_context=with_context),
            mixing)

    name = (f"two-origin: version {version_dir.name} of {version_dir.parent.name} and "
            f"sklesion 0.2.2 (Xception, prior-corrected), geometric mean with sklesion's "
            f"share {weight:g}" + (", sklesion given the patient's age, sex and site"
                                   if with_context else ""))
    return NetworkHooks(train, predict_network, name)


def main(argv: Sequence[str] | None = None) -> int:
    from dermserve.trainer.cli import LOG_FORMAT, build_parser, run_pipeline, settings_from

    parser = build_parser()
    parser.prog = "python -m dermserve.trainer.two_origin"
    parser.add_argument("--version-dir", type=Path, required=True,
                        help="the published version whose members join sklesion")
    parser.add_argument("--sklesion-model", type=Path, required=True,
                        help="sklesion's model.keras (from its wheel, fetched at training time)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--sklesion-weight", type=float, default=DEFAULT_SKLESION_WEIGHT,
                         help="sklesion's share of the geometric mean, in (0, 1)")
    weights.add_argument("--choose-weight", action="store_true",
                         help="choose sklesion's share on the --extra-holdout images")
    parser.add_argument("--with-context", action="store_true",
                        help="give sklesion the patient's age, sex and site: the version's "
                             "serving_default and explain take the context inputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    if not 0.0 < args.sklesion_weight < 1.0:
        parser.error("--sklesion-weight must be in (0, 1)")
    try:
        settings = dataclasses.replace(settings_from(args), weights_path=None)
    except ValueError as exc:
        parser.error(str(exc))
    weight = args.sklesion_weight
    if args.choose_weight:
        from dermserve.core.errors import DermserveError

        try:
            weight = choose_weight(args.version_dir, args.sklesion_model, settings,
                                   args.with_context)
        except DermserveError as exc:
            logger.error("%s", exc)
            return 2
    return run_pipeline(settings, two_origin_hooks(args.version_dir, args.sklesion_model,
                                                   weight, args.with_context))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
