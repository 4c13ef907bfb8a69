"""Seed ensembles exported as one network, so TF Serving and both backends serve them unchanged.

`ensemble_network(members)` wraps finished networks `(images -> [logits, features])` into one
Keras model with the same contract: its logits are the mean of the members' log-probabilities
(softmax of them is the normalised geometric mean of the members' probabilities, which is less
overconfident than the arithmetic mean when members disagree), its pooled features the members'
features side by side (the OOD statistics are fitted on them as for one network). With
`flip_tta`, every member also sees the horizontally flipped image, in the graph.

`python -m dermserve.trainer.ensemble --member WORKDIR --member WORKDIR ... <dermserve-train
flags>` builds
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

from dermserve.trainer.ensemble_network import ensemble_network
from dermserve.trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

def load_members(workdirs: Sequence[Path], settings: TrainSettings,
                 num_classes: int) -> list[Any]:
    """Each workdir's finished network (`network.weights.h5`), built as it was trained."""
    from dermserve.trainer.network import build_network
    from dermserve.trainer.train import FINAL_WEIGHTS

    members = []
    for position, workdir in enumerate(workdirs):
        weights = workdir / FINAL_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"{weights} does not exist: train the member first")
        check_built_as_trained(workdir, settings)
        network = build_network(num_classes, settings.input_spec(), settings.backbone, None,
                                settings.dropout, settings.seed + position,
                                settings.colour_constancy, name=f"member_{position}")
        network.load_weights(weights)
        members.append(network)
        logger.info("member %d: %s", position, weights)
    return members


MEMBER_SETTINGS = ("input_size", "reference_pixels", "backbone", "colour_constancy")
"""What a member must be rebuilt with as it was trained: its weights load into a network of
another input size without complaint (convolutions do not care), and would serve another model."""


def check_built_as_trained(workdir: Path, settings: TrainSettings) -> None:
    """Refuse a member whose training summary records other MEMBER_SETTINGS than `settings`."""
    import json

    from dermserve.trainer.errors import VersionMismatch
    from dermserve.trainer.train import SUMMARY_FILE

    path = workdir / SUMMARY_FILE
    try:
        trained = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError) as exc:
        raise VersionMismatch(f"{path}: no readable training settings ({exc})") from exc
    ours = dataclasses.asdict(settings)
    differ = [f"{name} {trained[name]!r} (here {ours[name]!r})" for name in MEMBER_SETTINGS
              if name in trained and trained[name] != ours[name]]
    if differ:
        raise VersionMismatch(f"member {workdir} was trained with {', '.join(differ)}: pass "
                              "the same settings to the ensemble")


def ensemble_hooks(workdirs: Sequence[Path], flip_tta: bool, backbone: str = "mobilenet_v2") -> Any:
    """Pipeline hooks whose `train` returns the ensemble of the finished members."""
    from dermserve.trainer.pipeline import NetworkHooks
    from dermserve.trainer.train import configure_threads, predict_network

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
    from dermserve.trainer.cli import LOG_FORMAT, build_parser, run_pipeline, settings_from

    parser = build_parser()
    parser.prog = "python -m dermserve.trainer.ensemble"
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
