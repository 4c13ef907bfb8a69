"""Measure the `sklesion` dermoscopy model (an Xception fine-tuned on HAM10000, MIT licence) as a
reference and as an ensemble partner of a published version, on the same checks.

It is never downloaded here: an ML engineer fetches the wheel once
(`pip download --no-deps sklesion==0.2.2`, unzip) and passes `sklesion/model.keras`. The model
takes a 254x254 image (its own normalisation inside) and a metadata vector (sex, body site, age);
Classify carries no metadata, so every image gets "unknown" sex and site and a missing age. With
`--bcn-dir`, BCN-84 (which records age, sex and site) is measured both ways: the neutral vector,
and each image's own context (`two_origin_network.sklesion_context`), to say what the context
would be worth (issue 29, item 4).
Its probabilities follow HAM10000's class priors; `prior-corrected` divides them by those priors
(balanced accuracy rewards that). Its authors trained it on HAM10000 with a split we do not know,
so **its own-test figures are optimistic**: judge it on the external check.

`trainer.two_origin` builds the combination as one network that the service serves.

    python -m dermserve.trainer.research.sklesion --model var/sklesion/sklesion/model.keras \\
        --version-dir models/ham10000/3 --data-dir ../shared/data/ham10000 \\
        --external-dir ../shared/data/isic2017 --out var/exp/sklesion.json
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.trainer import metrics as m
from dermserve.trainer.data import (
    EXTERNAL_CHECK_SPLITS,
    HAM10000_LABELS,
    Record,
    ham_priors,
    label_indices,
    load_labelled_folder,
    load_lesion_labelled_folder,
)
from dermserve.trainer.external import Measurer, Sources, own_test_records, write_results
from dermserve.trainer.two_origin_network import NEUTRAL_CONTEXT as UNKNOWN_METADATA
from dermserve.trainer.two_origin_network import SKLESION_SIZE, sklesion_context

logger = logging.getLogger(__name__)

BATCH = 16


def sklesion_probabilities(model: Any, records: Sequence[Record],
                           with_context: bool = False) -> np.ndarray:
    """Its probabilities for `records`, each with the neutral metadata vector, or with its own
    age, sex and site when `with_context`."""
    out = []
    for start in range(0, len(records), BATCH):
        batch = records[start:start + BATCH]
        images = []
        for record in batch:
            with Image.open(record.path) as image:
                rgb = image.convert("RGB").resize((SKLESION_SIZE, SKLESION_SIZE),
                                                  Image.Resampling.BILINEAR)
            images.append(np.asarray(rgb, np.float32))
        meta = np.stack([sklesion_context(r.age, r.sex, r.localization) if with_context
                         else UNKNOWN_METADATA for r in batch])
        out.append(np.asarray(model.predict_on_batch([np.stack(images), meta])))
    return np.concatenate(out)


def prior_corrected(probabilities: np.ndarray, priors: np.ndarray) -> np.ndarray:
    balanced = probabilities / priors[None, :]
    return np.asarray(balanced / balanced.sum(axis=1, keepdims=True))


def geometric_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = np.sqrt(np.clip(a, 1e-12, 1) * np.clip(b, 1e-12, 1))
    return np.asarray(mean / mean.sum(axis=1, keepdims=True))


def figures(y: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Threshold-free figures (no operating point: sklesion has no clean validation split)."""
    labels = list(HAM10000_LABELS)
    melanoma = labels.index("mel")
    predicted = probabilities.argmax(axis=1)
    present = [k for k in range(len(labels)) if np.any(y == k)]
    return {"images": int(len(y)),
            "balanced_accuracy": float(np.mean([(predicted[y == k] == k).mean()
                                                for k in present])),
            "melanoma_auc": m.binary_auc(probabilities[:, melanoma], y == melanoma),
            "recall": {labels[k]: float((predicted[y == k] == k).mean()) for k in present}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dermserve.trainer.research.sklesion",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="sklesion's model.keras")
    parser.add_argument("--version-dir", type=Path, required=True,
                        help="the published version to compare with and to average with")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--external-dir", type=Path, default=None, help="ISIC 2017")
    parser.add_argument("--bcn-dir", type=Path, default=None,
                        help="BCN-84: measured with and without each image's context")
    parser.add_argument("--skip-own", action="store_true",
                        help="leave out the own test (optimistic for sklesion anyway)")
    parser.add_argument("--out", type=Path, required=True, help="JSON; a .md table beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import keras

    model = keras.models.load_model(args.model, compile=False)
    priors = ham_priors(args.data_dir)
    version = Measurer(args.version_dir)
    sets: dict[str, list[Record]] = {}
    if args.external_dir is not None:
        sets["external check"] = load_labelled_folder(args.external_dir, EXTERNAL_CHECK_SPLITS)
    if not args.skip_own:
        sets["own test (optimistic for sklesion)"] = own_test_records(
            args.version_dir, Sources(args.data_dir))[0]
    if args.bcn_dir is not None:
        sets["BCN-84"] = [r for r in load_lesion_labelled_folder(args.bcn_dir)
                          if r.dx in HAM10000_LABELS]
    results: dict[str, dict[str, Any]] = {}
    ours_name = f"version {args.version_dir.name}"
    for name, records in sets.items():
        logger.info("%s: %d images", name, len(records))
        y = label_indices(records, HAM10000_LABELS)
        ours = version.probabilities(records)
        results[name] = {ours_name: figures(y, ours)}
        for context in (False, True) if name == "BCN-84" else (False,):
            said = " with context" if context else ""
            raw = sklesion_probabilities(model, records, with_context=context)
            corrected = prior_corrected(raw, priors)
            results[name] |= {
                f"sklesion{said}": figures(y, raw),
                f"sklesion{said}, prior-corrected": figures(y, corrected),
                f"{ours_name} x sklesion{said} prior-corrected (geometric mean)":
                    figures(y, geometric_mean(ours, corrected))}
    write_results(args.out, results, table(results))
    return 0


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| set | model | balanced accuracy (classes present) | melanoma AUC | recall mel / "
             "nv / bkl |", "|---|---|---:|---:|---|"]
    for name, rows in results.items():
        for model, r in rows.items():
            recall = " / ".join(f"{r['recall'].get(c, float('nan')):.3f}"
                                for c in ("mel", "nv", "bkl"))
            lines.append(f"| {name} | {model} | {r['balanced_accuracy']:.3f} | "
                         f"{r['melanoma_auc']:.3f} | {recall} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
