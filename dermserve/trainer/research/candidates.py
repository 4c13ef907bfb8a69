"""Compare trained networks before publishing any: head-only against adapted, seed by seed.

For each finished `trainer.train` workdir (its `network.weights.h5`, or with `:head` its stage-1
network `checkpoints/stage1-head-best.weights.h5`), and for ensembles of several (`a+b+c`, and
`a+b+c^flip` with each member also run on the mirrored image), this
predicts the workdir's validation split, its own test (primary rendition) and the ISIC 2017
external check with the same preprocessing as the service, then decides on validation exactly as
the pipeline does (temperature, the melanoma threshold for the validation sensitivity target) and
measures test and external figures. Nothing here is published; the candidate chosen is then
published through `dermserve-train` / `python -m dermserve.trainer.ensemble`, which measures it
again in full (robustness table, CPU cost, sanity images).

    python -m dermserve.trainer.research.candidates --data-dir ../shared/data/ham10000 \\
        --external-dir ../shared/data/isic2017 --out var/candidates.json \\
        var/exp/isic-s1:head var/exp/isic-s1 var/exp/isic-s1+var/exp/isic-s2+var/exp/isic-s3
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dermserve.trainer import metrics as m
from dermserve.trainer.calibration import calibrate, softmax
from dermserve.trainer.data import (
    EXTERNAL_CHECK_SPLITS,
    Record,
    Split,
    label_indices,
    load_labelled_folder,
    load_records,
    load_rendition,
)
from dermserve.trainer.evaluate import melanoma_threshold
from dermserve.trainer.external import external_metrics, own_metrics, write_results
from dermserve.trainer.pipeline import primary_rendition
from dermserve.trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

HEAD_SUFFIX = ":head"
HEAD_WEIGHTS = Path("checkpoints") / "stage1-head-best.weights.h5"
ENSEMBLE_SEPARATOR = "+"
FLIP_SUFFIX = "^flip"


ARCHITECTURE_FIELDS = ("backbone", "input_size", "reference_pixels", "colour_constancy",
                       "dropout", "first_trainable")
"""What a workdir's `training.json` must say for its weights to be loaded into a network."""


def workdir_of(spec: str) -> Path:
    return Path(spec.removesuffix(FLIP_SUFFIX).removesuffix(HEAD_SUFFIX))


def trained_settings(workdir: Path) -> TrainSettings:
    """The architecture a finished workdir was trained with (from its `training.json`)."""
    from dermserve.trainer.train import SUMMARY_FILE

    saved = json.loads((workdir / SUMMARY_FILE).read_text(encoding="utf-8"))["settings"]
    return TrainSettings(**{name: saved[name] for name in ARCHITECTURE_FIELDS})


def _network(spec: str, num_classes: int, position: int) -> Any:
    from dermserve.trainer.network import build_network
    from dermserve.trainer.train import FINAL_WEIGHTS

    workdir = workdir_of(spec)
    settings = trained_settings(workdir)
    network = build_network(num_classes, settings.input_spec(), settings.backbone, None,
                            settings.dropout, position, settings.colour_constancy,
                            name=f"candidate_{position}")
    weights = HEAD_WEIGHTS if spec.endswith(HEAD_SUFFIX) else Path(FINAL_WEIGHTS)
    network.load_weights(workdir / weights)
    return network


def candidate_network(spec: str, num_classes: int) -> tuple[Any, TrainSettings]:
    """One workdir's network, or the ensemble of `a+b+...` (`...^flip`: with in-graph flip TTA),
    and the (first) member's settings."""
    from dermserve.trainer.ensemble_network import ensemble_network

    flip = spec.endswith(FLIP_SUFFIX)
    parts = spec.removesuffix(FLIP_SUFFIX).split(ENSEMBLE_SEPARATOR)
    members = [_network(part, num_classes, n) for n, part in enumerate(parts)]
    network = members[0] if len(members) == 1 and not flip else ensemble_network(members, flip)
    return network, trained_settings(workdir_of(parts[0]))


def evaluate_candidate(network: Any, split: Split, external: Sequence[Record],
                       settings: TrainSettings, sensitivity: float) -> dict[str, Any]:
    """Decide on validation, measure on the own test and the external check."""
    from dermserve.trainer.train import predict_network

    spec, labels = settings.input_spec(), split.labels
    val_y = label_indices(split.val, labels)
    val_logits = predict_network(network, split.val, spec)[0]
    temperature = calibrate(val_logits, val_y).temperature
    threshold = melanoma_threshold(softmax(val_logits, temperature), val_y, labels, sensitivity)
    test = primary_rendition(split.test)
    test_probabilities = softmax(predict_network(network, test, spec)[0], temperature)
    external_probabilities = softmax(predict_network(network, external, spec)[0], temperature)
    val_balanced = m.balanced_accuracy(val_y, val_logits.argmax(1), len(labels))
    return {"validation_balanced_accuracy": val_balanced, "temperature": temperature,
            "melanoma_threshold": threshold,
            "own_test": own_metrics(label_indices(test, labels), test_probabilities, labels,
                                    threshold),
            "external": external_metrics(label_indices(external, labels),
                                         external_probabilities, labels, threshold, 200)}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| candidate | val bal. acc. | own bal. acc. | own macro AUC | own mel sens. | "
             "own ECE | ext. mel AUC | ext. mel sens. | ext. nv spec. | ext. recall mel / nv / "
             "bkl |", "|" + "---|" * 10]
    for name, r in results.items():
        own, ext = r["own_test"], r["external"]
        recall = " / ".join(f"{ext['recall_argmax'].get(c, float('nan')):.3f}"
                            for c in ("mel", "nv", "bkl"))
        lines.append(f"| {name} | {r['validation_balanced_accuracy']:.3f} | "
                     f"{own['balanced_accuracy']:.3f} | {own['macro_auc']:.3f} | "
                     f"{own.get('melanoma_sensitivity', float('nan')):.3f} | {own['ece']:.3f} | "
                     f"{ext['melanoma_auc']['value']:.3f} | {ext['melanoma_sensitivity']:.3f} | "
                     f"{ext['nevus_specificity']:.3f} | {recall} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dermserve.trainer.research.candidates",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+",
                        help="WORKDIR, WORKDIR:head (its stage-1 network), A+B+C (ensemble); "
                             "a ^flip suffix adds in-graph flip TTA")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--renditions-dir", type=Path, default=None,
                        help="needed when the workdirs' split has the second rendition")
    parser.add_argument("--external-dir", type=Path, required=True)
    parser.add_argument("--extra-train-dir", type=Path, default=None,
                        help="needed when the workdirs' split has extra training images")
    parser.add_argument("--melanoma-sensitivity", type=float,
                        default=TrainSettings.melanoma_sensitivity)
    parser.add_argument("--out", type=Path, required=True, help="JSON; a .md table beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from dermserve.trainer.train import configure_threads

    configure_threads(TrainSettings.threads)
    records = load_records(args.data_dir)
    if args.renditions_dir is not None:
        records += load_rendition(args.renditions_dir, records)
    if args.extra_train_dir is not None:
        records += load_labelled_folder(args.extra_train_dir, ("train",))
    first = workdir_of(args.candidates[0].split(ENSEMBLE_SEPARATOR)[0])
    split = Split.load(first / "split.json", records)
    external = load_labelled_folder(args.external_dir, EXTERNAL_CHECK_SPLITS)
    results: dict[str, dict[str, Any]] = {}
    for spec in args.candidates:
        logger.info("candidate %s", spec)
        network, settings = candidate_network(spec, len(split.labels))
        results[spec] = evaluate_candidate(network, split, external, settings,
                                           args.melanoma_sensitivity)
        write_results(args.out, results, table(results))  # after each: a long run shows progress
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
