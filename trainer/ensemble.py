"""Seed ensembles exported as one network, so TF Serving and both backends serve them unchanged.

`ensemble_network(members)` wraps finished networks `(images -> [logits, features])` into one
Keras model with the same contract: its logits are the mean of the members' log-probabilities
(softmax of them is the normalised geometric mean of the members' probabilities, which is less
overconfident than the arithmetic mean when members disagree), its pooled features the members'
features side by side (the OOD statistics are fitted on them as for one network). With
`flip_tta`, every member also sees the horizontally flipped image, in the graph.

`python -m trainer.ensemble --member WORKDIR --member WORKDIR ... <dermserve-train flags>` builds
the ensemble of finished `trainer.train` workdirs (same split, same input size) and runs the usual
pipeline on it: calibration, thresholds and abstention on validation, evaluation, the promotion
gate, publication with report and model card.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

ENSEMBLE_NAME = "dermserve_ensemble"
FLIP_ENSEMBLE_NAME = "dermserve_ensemble_flip_tta"
"""The Keras names of ensembles, which tell `ensemble_with_feature_maps` how one was built."""


def ensemble_network(members: Sequence[Any], flip_tta: bool = False,
                     feature_maps: bool = False) -> Any:
    """One model `(N, H, W, 3) in [-1, 1] -> [mean log-probabilities (N, K), features (N, sum D)]`
    over `members` (each with that contract and a unique name). With `feature_maps`, the members
    must also output their last feature map (`trainer.network.with_feature_map`) and the
    ensemble outputs them after the two, one per member, of the plain (unflipped) view."""
    import keras
    from keras import ops

    inputs = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    views = [inputs, ops.flip(inputs, axis=2)] if flip_tta else [inputs]
    log_probabilities, features, maps = [], [], []
    for member in members:
        for position, view in enumerate(views):
            logits, pooled, *member_maps = member(view, training=False)
            log_probabilities.append(ops.log_softmax(logits, axis=-1))
            if position == 0:
                features.append(pooled)
                maps.extend(member_maps)
    mean = ops.mean(ops.stack(log_probabilities, axis=0), axis=0)
    joined = features[0] if len(features) == 1 else ops.concatenate(features, axis=-1)
    outputs = [mean, joined, *maps] if feature_maps else [mean, joined]
    return keras.Model(inputs, outputs, name=FLIP_ENSEMBLE_NAME if flip_tta else ENSEMBLE_NAME)


def ensemble_with_feature_maps(network: Any) -> Any | None:
    """An `ensemble_network` rebuilt over the same member layers (so the same variables) with
    each member's last feature map as an extra output; None if `network` is not an ensemble or
    a member has no feature map."""
    import keras

    from trainer.network import with_feature_map

    if network.name not in (ENSEMBLE_NAME, FLIP_ENSEMBLE_NAME):
        return None
    members = [with_feature_map(layer) for layer in network.layers
               if isinstance(layer, keras.Model)]
    if not members or any(member is None for member in members):
        return None
    return ensemble_network(members, network.name == FLIP_ENSEMBLE_NAME, feature_maps=True)


def load_members(workdirs: Sequence[Path], settings: TrainSettings,
                 num_classes: int) -> list[Any]:
    """Each workdir's finished network (`network.weights.h5`), built as it was trained."""
    from trainer.network import build_network
    from trainer.train import FINAL_WEIGHTS

    members = []
    for position, workdir in enumerate(workdirs):
        weights = workdir / FINAL_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"{weights} does not exist: train the member first")
        network = build_network(num_classes, settings.input_spec(), settings.backbone, None,
                                settings.dropout, settings.seed + position,
                                settings.colour_constancy, name=f"member_{position}")
        network.load_weights(weights)
        members.append(network)
        logger.info("member %d: %s", position, weights)
    return members


def ensemble_hooks(workdirs: Sequence[Path], flip_tta: bool, backbone: str = "mobilenet_v2") -> Any:
    """Pipeline hooks whose `train` returns the ensemble of the finished members."""
    from trainer.pipeline import NetworkHooks
    from trainer.train import configure_threads, predict_network

    def train(split: Any, settings: TrainSettings, workdir: Path) -> Any:
        configure_threads(settings.threads)
        members = load_members(workdirs, settings, len(split.labels))
        return ensemble_network(members, flip_tta)

    return NetworkHooks(train, predict_network, ensemble_name(workdirs, flip_tta, backbone))


def ensemble_name(workdirs: Sequence[Path], flip_tta: bool, backbone: str) -> str:
    """What the config, report and model card call the ensemble."""
    members = ", ".join(path.name for path in workdirs)
    return (f"ensemble of {len(workdirs)} {backbone} networks ({members}; mean "
            f"log-probabilities{', flip TTA' if flip_tta else ''})")


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.cli import LOG_FORMAT, build_parser, run_pipeline, settings_from

    parser = build_parser()
    parser.prog = "python -m trainer.ensemble"
    parser.add_argument("--member", type=Path, action="append", required=True,
                        help="a finished trainer.train workdir (repeat for each member)")
    parser.add_argument("--flip-tta", action="store_true",
                        help="average each member over the image and its mirror, in the graph")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    settings = dataclasses.replace(settings, weights_path=None)
    return run_pipeline(settings, ensemble_hooks(args.member, args.flip_tta, settings.backbone))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
