"""The external check and the robustness table of a model version, through its SavedModel.

A model that looks fine on its own lesion-grouped split can be near chance on other clinics'
images, which is what hospitals send. This module measures a *finished* version (a SavedModel
directory, read as the service reads it: `core.preprocessing.to_model_input` and the
`serving_default` signature) on
- two external checks, never trained, tuned, thresholded or epoch-picked on:
  - ISIC 2017's validation and test images (other clinics and cameras, three of the seven
    classes, squashed to 256x256), bootstrapped by image (it gives no lesion ids);
  - BCN-84 (Hospital Clinic de Barcelona, ISIC 2019, all seven classes plus scc, stored at 84 px),
    bootstrapped by lesion; its scc images (not one of the seven) are reported on their own, as
    what the model calls them;
  each with balanced accuracy over the classes present, melanoma-vs-rest ROC AUC (both with 95%
  intervals), per-class recall, melanoma sensitivity and nevus specificity at the version's
  served operating point, and the share of images the version answers rather than abstains on
  (its own abstention rule: low confidence, out of distribution);
- its own held-out test (the version's `split.json`), in the primary rendition at three input
  scales, shrunk to BCN-84's 84x84 pixels (BCN-84's resolution reference) and in a second
  rendition (the 224x224 central crops), for the robustness table;
- its CPU cost: single-image latency and batch throughput of the signature on this machine.

`python -m dermserve.trainer.external --version-dir models/ham10000/3 ...` (`make external-check`)
writes the JSON and Markdown tables; several `--version-dir`s give one comparison (the model docs'
table).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.core.context import ContextBatch
from dermserve.core.prediction import Abstention
from dermserve.trainer import abstention
from dermserve.trainer import metrics as m
from dermserve.trainer.data import (
    EXTERNAL_CHECK_SPLITS,
    Record,
    base_image_id,
    image_folders,
    index_images,
    label_indices,
    load_labelled_folder,
    load_lesion_labelled_folder,
    load_records,
    record_contexts,
)
from dermserve.trainer.evaluate import MELANOMA
from dermserve.trainer.served import ServedVersion

logger = logging.getLogger(__name__)

NEVUS = "nv"
EXTERNAL_CLASSES = ("mel", "nv", "bkl")
"""The classes ISIC 2017 has (its seborrheic keratoses are HAM10000's bkl)."""
CHECKS = ("external", "external_bcn84")
"""The keys of the two external checks in a measurement (ISIC 2017, BCN-84)."""
CHECK_TITLES = {"external": "ISIC 2017", "external_bcn84": "BCN-84"}
GATE_METRICS = ("melanoma_auc", "balanced_accuracy")
"""What a candidate may not be worse at than the latest version, on each external check."""
BCN_PIXELS = 84 * 84  # BCN-84's images: the own test is shrunk to as many pixels
ROBUSTNESS_SCALES = (0.5, 1.0, 2.0)
"""Input sizes relative to the primary rendition (200x150): a smaller photo, as is, a sharper
frame (the shared preprocessing brings it back to the training detail)."""
DEFAULT_BOOTSTRAP = 1000  # resamples for the 95% intervals
LATENCY_REPEATS = 30  # single-image signature calls timed (the median is reported)
THROUGHPUT_BATCH = 32  # images per call for the throughput figure
THROUGHPUT_CALLS = 6
SPLIT_RELATIVE_PATH = Path("assets.extra") / "split.json"


@dataclass(frozen=True)
class Sources:
    """Where the evaluation images are."""

    data_dir: Path  # HAM10000 (metadata and the primary rendition)
    external_dir: Path | None = None  # ISIC 2017 (labels.csv)
    renditions_dir: Path | None = None  # the 224x224 crops of the same images
    bcn_dir: Path | None = None  # BCN-84 (labels.csv with lesion ids; scc rows kept apart)


def served_decision(probabilities: np.ndarray, labels: Sequence[str],
                    melanoma_threshold: float | None) -> np.ndarray:
    """The label index the service's operating point gives: melanoma when P(mel) reaches the
    threshold, else the most probable class."""
    decision = probabilities.argmax(axis=1)
    if melanoma_threshold is not None and MELANOMA in labels:
        melanoma = list(labels).index(MELANOMA)
        decision = np.where(probabilities[:, melanoma] >= melanoma_threshold, melanoma, decision)
    return np.asarray(decision)


def external_metrics(y: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
                     melanoma_threshold: float | None, bootstrap: int = DEFAULT_BOOTSTRAP,
                     seed: int = 0, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """An external check's figures over the classes present in `y`; `groups` (lesion ids) are
    the bootstrap unit, images when not given (ISIC 2017 gives no lesion ids)."""
    labels = list(labels)
    melanoma, nevus = labels.index(MELANOMA), labels.index(NEVUS)
    argmax = probabilities.argmax(axis=1)
    served = served_decision(probabilities, labels, melanoma_threshold)
    present = [k for k in range(len(labels)) if np.any(y == k)]
    recall = {labels[k]: float((argmax[y == k] == k).mean()) for k in present}
    served_recall = {labels[k]: float((served[y == k] == k).mean()) for k in present}
    units = [str(i) for i in range(len(y))] if groups is None else list(groups)
    resamples = m.lesion_bootstrap_indices(units, bootstrap, seed)

    def auc(yy: np.ndarray, pp: np.ndarray) -> float:
        return m.binary_auc(pp[:, melanoma], yy == melanoma)

    def balanced(yy: np.ndarray, pp: np.ndarray) -> float:
        return m.balanced_accuracy(yy, pp.argmax(axis=1), len(labels))

    def with_interval(metric: Any) -> dict[str, Any]:
        return {"value": metric(y, probabilities),
                "ci95": list(m.bootstrap_interval(metric, y, probabilities, resamples))}

    flagged = probabilities[:, melanoma] >= (melanoma_threshold if melanoma_threshold
                                             is not None else 1.1)
    is_mel, nevi = y == melanoma, y == nevus
    return {
        "images": int(len(y)),
        "lesions": len(set(units)),
        "bootstrap_unit": "image" if groups is None else "lesion",
        "counts": {labels[k]: int((y == k).sum()) for k in present},
        "melanoma_auc": with_interval(auc),
        "balanced_accuracy": with_interval(balanced),
        "macro_auc": m.macro_auc(y, probabilities),
        "recall_argmax": recall,
        "mean_recall_argmax": float(np.mean(list(recall.values()))),
        "melanoma_threshold": melanoma_threshold,
        "melanoma_sensitivity": float(flagged[is_mel].mean()) if is_mel.any() else None,
        "nevus_specificity": float(1 - flagged[nevi].mean()) if nevi.any() else None,
        "recall_served": served_recall,
    }


def outside_calls(probabilities: np.ndarray, labels: Sequence[str],
                  melanoma_threshold: float | None) -> dict[str, Any]:
    """What images of a class outside the seven (BCN-84's scc) are called: the share given each
    label by the argmax and at the served operating point."""
    def shares(decision: np.ndarray) -> dict[str, float]:
        return {label: float((decision == k).mean()) for k, label in enumerate(labels)}

    return {"images": int(len(probabilities)),
            "called_argmax": shares(probabilities.argmax(axis=1)),
            "called_served": shares(served_decision(probabilities, labels,
                                                    melanoma_threshold))}


def own_metrics(y: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
                melanoma_threshold: float | None) -> dict[str, Any]:
    """Point estimates on the own test (the version's report has the intervals)."""
    k = len(labels)
    out = {"images": int(len(y)),
           "balanced_accuracy": m.balanced_accuracy(y, probabilities.argmax(1), k),
           "macro_f1": m.macro_f1(y, probabilities.argmax(1), k),
           "macro_auc": m.macro_auc(y, probabilities),
           "ece": m.expected_calibration_error(y, probabilities)}
    if MELANOMA in labels and melanoma_threshold is not None:
        melanoma = list(labels).index(MELANOMA)
        flagged = probabilities[:, melanoma] >= melanoma_threshold
        out["melanoma_sensitivity"] = float(flagged[y == melanoma].mean())
        out["served_balanced_accuracy"] = m.balanced_accuracy(
            y, served_decision(probabilities, labels, melanoma_threshold), k)
    return out


def _read(path: Path, scale: float = 1.0, pixels: int | None = None) -> Image.Image:
    """The image, scaled by `scale` or (aspect ratio kept) to about `pixels` pixels."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if pixels is not None:
        scale = (pixels / (rgb.width * rgb.height)) ** 0.5
    if scale != 1.0:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return rgb


def own_test_records(version_dir: Path, sources: Sources) -> tuple[list[Record], list[Record]]:
    """(primary-rendition test records, the same images' second rendition where it exists) of
    the version's saved split."""
    manifest = json.loads((version_dir / SPLIT_RELATIVE_PATH).read_text(encoding="utf-8"))
    test_ids = {base_image_id(entry["image_id"]) for entry in manifest["splits"]["test"]}
    records = [r for r in load_records(sources.data_dir) if r.image_id in test_ids]
    if sources.renditions_dir is None:
        return records, []
    crops = index_images(image_folders(sources.renditions_dir))
    return records, [replace(r, path=crops[r.image_id]) for r in records if r.image_id in crops]


class Measurer:
    """Classifies images through one version's SavedModel, as the service does."""

    def __init__(self, version_dir: Path, served: ServedVersion | None = None,
                 use_context: bool = True) -> None:
        """`served`: the version's `trainer.served.ServedVersion` when the caller has loaded it
        already (loading a SavedModel costs seconds, an ensemble's more). `use_context`: a
        version that takes context is sent each record's age, sex and site, as a caller with the
        metadata would (neutral rows otherwise, as a caller without it)."""
        self.served = served if served is not None else ServedVersion(version_dir)
        self.use_context = use_context
        self.labels = self.served.config.labels
        threshold = self.served.config.metrics.get("melanoma_threshold")
        self.melanoma_threshold = None if threshold is None else float(threshold)

    def probabilities(self, records: Sequence[Record], scale: float = 1.0,
                      pixels: int | None = None) -> np.ndarray:
        return self.classified(records, scale, pixels)[0]

    def classified(self, records: Sequence[Record], scale: float = 1.0,
                   pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The records' probabilities [N, K] and OOD scores [N]."""
        probabilities, ood_scores = [], []
        for start in range(0, len(records), 256):
            chunk = records[start:start + 256]
            images = [_read(r.path, scale, pixels) for r in chunk]
            chunk_probabilities, chunk_ood = self.served.classify(images, self._contexts(chunk))
            probabilities.append(chunk_probabilities)
            ood_scores.append(chunk_ood)
        return np.concatenate(probabilities), np.concatenate(ood_scores)

    def abstentions(self, probabilities: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
        """The share of images the service answers and why it abstains on the others, by the
        version's own rule: a version that abstains on most of a clinic's images is of little
        use there, whatever its figures on the images it would have answered."""
        shares = abstention.decision_shares(abstention.decisions(
            probabilities, ood_scores, self.served.config.abstention))
        return {"answered" if reason is Abstention.NONE else reason.value.lower(): share
                for reason, share in shares.items()}

    @property
    def context_mode(self) -> str:
        """How patient context reaches the version: "given", "neutral" or "not taken"."""
        if not self.served.takes_context:
            return "not taken"
        return "given" if self.use_context else "neutral"

    def _contexts(self, records: Sequence[Record]) -> ContextBatch | None:
        return record_contexts(records) if self.context_mode == "given" else None

    def cost(self, image_path: Path) -> dict[str, float]:
        """Median single-image signature latency (ms) and batch throughput (images/s) here."""
        single = self.served.inputs([_read(image_path)])
        batch = np.repeat(single, THROUGHPUT_BATCH, axis=0)
        self.served.classify_arrays(batch)  # warm-up (graph tracing, thread pools)
        times = []
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            self.served.classify_arrays(single)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(THROUGHPUT_CALLS):
            self.served.classify_arrays(batch)
        seconds = time.perf_counter() - started
        return {"single_image_p50_ms": float(np.median(times) * 1000),
                "batch_images_per_s": THROUGHPUT_BATCH * THROUGHPUT_CALLS / seconds}


def measure_external(measurer: Measurer, external_dir: Path,
                     bootstrap: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """ISIC 2017's validation and test rows."""
    external = load_labelled_folder(external_dir, EXTERNAL_CHECK_SPLITS)
    logger.info("external check ISIC 2017 (%d images)", len(external))
    probabilities, ood_scores = measurer.classified(external)
    result = external_metrics(label_indices(external, measurer.labels), probabilities,
                              measurer.labels, measurer.melanoma_threshold, bootstrap)
    result["abstention"] = measurer.abstentions(probabilities, ood_scores)
    return result


def measure_bcn(measurer: Measurer, bcn_dir: Path,
                bootstrap: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """BCN-84: the seven classes by lesion, and its scc images on their own."""
    records = load_lesion_labelled_folder(bcn_dir, measurer.labels)
    seven = [r for r in records if r.dx in measurer.labels]
    outside = [r for r in records if r.dx not in measurer.labels]
    logger.info("external check BCN-84 (%d images, %d outside the seven)", len(seven),
                len(outside))
    probabilities, ood_scores = measurer.classified(seven)
    result = external_metrics(label_indices(seven, measurer.labels), probabilities,
                              measurer.labels, measurer.melanoma_threshold, bootstrap,
                              groups=[r.lesion_id for r in seven])
    result["abstention"] = measurer.abstentions(probabilities, ood_scores)
    if outside:
        result["outside"] = {dx: outside_calls(
            measurer.probabilities([r for r in outside if r.dx == dx]), measurer.labels,
            measurer.melanoma_threshold) for dx in sorted({r.dx for r in outside})}
    return result


def measure_checks(measurer: Measurer, sources: Sources,
                   bootstrap: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """Every external check `sources` names, by its key in CHECKS."""
    checks: dict[str, Any] = {}
    if sources.external_dir is not None:
        checks["external"] = measure_external(measurer, sources.external_dir, bootstrap)
    if sources.bcn_dir is not None:
        checks["external_bcn84"] = measure_bcn(measurer, sources.bcn_dir, bootstrap)
    return checks


def measure_version(version_dir: Path, sources: Sources, bootstrap: int = DEFAULT_BOOTSTRAP,
                    with_cost: bool = True, served: ServedVersion | None = None,
                    use_context: bool = True) -> dict[str, Any]:
    """Every figure of this module for one version (see the module docstring); `served` and
    `use_context` as for Measurer."""
    measurer = Measurer(version_dir, served, use_context)
    labels, threshold = measurer.labels, measurer.melanoma_threshold
    result: dict[str, Any] = {"version_dir": str(version_dir), "labels": list(labels),
                              "melanoma_threshold": threshold,
                              "context": measurer.context_mode}
    result.update(measure_checks(measurer, sources, bootstrap))
    primary, second = own_test_records(version_dir, sources)
    y = label_indices(primary, labels)
    robustness: dict[str, Any] = {}
    for scale in ROBUSTNESS_SCALES:
        logger.info("%s: own test at scale %s (%d images)", version_dir, scale, len(primary))
        probabilities = measurer.probabilities(primary, scale)
        robustness[f"primary_x{scale:g}"] = own_metrics(y, probabilities, labels, threshold)
    if sources.bcn_dir is not None:
        logger.info("%s: own test at BCN-84's %d pixels", version_dir, BCN_PIXELS)
        robustness["primary_84px"] = own_metrics(
            y, measurer.probabilities(primary, pixels=BCN_PIXELS), labels, threshold)
    if second:
        logger.info("%s: own test, second rendition (%d images)", version_dir, len(second))
        robustness["crops224"] = own_metrics(label_indices(second, labels),
                                             measurer.probabilities(second), labels, threshold)
    result["own_test"] = robustness["primary_x1"]
    result["robustness"] = robustness
    if with_cost and primary:
        result["cost"] = measurer.cost(primary[0].path)
    return result


def recorded_checks(version_dir: Path) -> dict[str, Any]:
    """The external checks in a version's report, by key (empty when published without)."""
    path = version_dir / "assets.extra" / "report" / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        checks = report["external_check"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {key: checks[key] for key in CHECKS if isinstance(checks, dict) and key in checks}


def _gate_value(check: dict[str, Any], metric: str) -> float | None:
    value = check.get(metric, {})
    return float(value["value"]) if isinstance(value, dict) and "value" in value else None


def check_external_gate(model_dir: Path, candidate: dict[str, Any], sources: Sources,
                        force: bool = False, bootstrap: int = DEFAULT_BOOTSTRAP) -> None:
    """Refuse a candidate worse than the latest version on either external check, by melanoma
    AUC or balanced accuracy: better at home and worse abroad is not promoted (the own test
    cannot judge a member whose training data overlaps HAM10000). A figure the latest version
    was published without is measured now."""
    from dermserve.trainer.publish import refuse_unless_forced, version_numbers

    versions = version_numbers(model_dir)
    if not versions:
        return
    latest = model_dir / str(versions[-1])
    current = recorded_checks(latest)
    needed = [key for key in CHECKS if key in candidate and any(
        _gate_value(current.get(key, {}), metric) is None for metric in GATE_METRICS)]
    if needed:
        measured = measure_checks(Measurer(latest), Sources(
            sources.data_dir, sources.external_dir if "external" in needed else None,
            bcn_dir=sources.bcn_dir if "external_bcn84" in needed else None), bootstrap)
        current.update(measured)
    worse = []
    for key in CHECKS:
        for metric in GATE_METRICS:
            ours = _gate_value(candidate.get(key, {}), metric)
            theirs = _gate_value(current.get(key, {}), metric)
            if ours is None or theirs is None:
                continue
            logger.info("external gate: %s %s %.4f against version %s's %.4f",
                        CHECK_TITLES[key], metric, ours, latest.name, theirs)
            if ours < theirs:
                worse.append(f"{CHECK_TITLES[key]} {metric} {ours:.4f} is below version "
                             f"{latest.name}'s {theirs:.4f}")
    if worse:
        refuse_unless_forced("; ".join(worse), force)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "-"
    low, high = figure.get("ci95", [None, None])
    return f"{_f(figure.get('value'))} [{_f(low)}-{_f(high)}]"


def comparison_markdown(results: Sequence[dict[str, Any]]) -> str:
    """One row per version in each of three tables: own test and robustness, the two external
    checks, and BCN-84 by class (with what its scc images are called)."""
    return "\n".join([own_table(results), "", checks_table(results), "",
                      bcn_class_table(results)]) + "\n"


def own_table(results: Sequence[dict[str, Any]]) -> str:
    head = ("| version | own bal. acc. | own macro AUC | own mel sens. | own ECE | crops224 bal. "
            "acc. | x0.5 / x2 bal. acc. | 84 px bal. acc. | p50 ms | img/s |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        own, rob, cost = r["own_test"], r["robustness"], r.get("cost", {})
        lines.append(
            f"| {r.get('name', r['version_dir'])} | {_f(own['balanced_accuracy'])} | "
            f"{_f(own['macro_auc'])} | {_f(own.get('melanoma_sensitivity'))} | "
            f"{_f(own['ece'])} | {_f(rob.get('crops224', {}).get('balanced_accuracy'))} | "
            f"{_f(rob['primary_x0.5']['balanced_accuracy'])} / "
            f"{_f(rob['primary_x2']['balanced_accuracy'])} | "
            f"{_f(rob.get('primary_84px', {}).get('balanced_accuracy'))} | "
            f"{_f(cost.get('single_image_p50_ms'), 1)} | "
            f"{_f(cost.get('batch_images_per_s'), 1)} |")
    return "\n".join(lines)


def checks_table(results: Sequence[dict[str, Any]]) -> str:
    head = ("| version | check | images (lesions) | mel AUC [95% CI] | bal. acc. [95% CI] | "
            "macro AUC | mel sens. / nv spec. at the operating point | answered (not "
            "abstained) |")
    lines = [head, "|" + "---|" * 8]
    for r in results:
        for key in CHECKS:
            ext = r.get(key)
            if not ext:
                continue
            lines.append(
                f"| {r.get('name', r['version_dir'])} | {CHECK_TITLES[key]} | {ext['images']} "
                f"({ext.get('lesions', '-')}) | {_interval(ext['melanoma_auc'])} | "
                f"{_interval(ext.get('balanced_accuracy'))} | {_f(ext.get('macro_auc'))} | "
                f"{_f(ext.get('melanoma_sensitivity'))} / {_f(ext.get('nevus_specificity'))} | "
                f"{_f(ext.get('abstention', {}).get('answered'))} |")
    return "\n".join(lines)


def bcn_class_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [r for r in results if r.get("external_bcn84")]
    if not rows:
        return ""
    labels = rows[0]["labels"]
    outside = sorted({dx for r in rows for dx in r["external_bcn84"].get("outside", {})})
    head = (f"| version | BCN-84 recall {' / '.join(labels)} (argmax) | "
            + " | ".join(f"{dx} called {' / '.join(labels)}" for dx in outside) + " |")
    lines = [head, "|" + "---|" * (2 + len(outside))]
    for r in rows:
        bcn = r["external_bcn84"]
        recall = " / ".join(_f(bcn["recall_argmax"].get(label)) for label in labels)
        called = [" / ".join(_f(bcn["outside"].get(dx, {}).get("called_argmax", {}).get(label),
                                2) for label in labels) for dx in outside]
        lines.append(f"| {r.get('name', r['version_dir'])} | {recall} | "
                     + " | ".join(called) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dermserve.trainer.external",
        description="Measure published versions on the two external checks (ISIC 2017, BCN-84), "
                    "their own test at three scales, at 84 px and in the crops rendition, and "
                    "their CPU cost.")
    parser.add_argument("--version-dir", type=Path, action="append", required=True,
                        help="a version directory (repeat to compare several)")
    parser.add_argument("--name", action="append", default=[],
                        help="a row name per --version-dir (default: the path)")
    parser.add_argument("--data-dir", type=Path, required=True, help="HAM10000")
    parser.add_argument("--external-dir", type=Path, default=None, help="ISIC 2017")
    parser.add_argument("--bcn-dir", type=Path, default=None, help="BCN-84")
    parser.add_argument("--renditions-dir", type=Path, default=None,
                        help="the 224x224 crops of the HAM10000 images")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP)
    parser.add_argument("--no-cost", action="store_true", help="skip the latency measurement")
    parser.add_argument("--neutral-context", action="store_true",
                        help="send a version that takes context neutral rows (a caller without "
                             "the patient's age, sex and site) instead of each image's own")
    parser.add_argument("--out", type=Path, required=True, help="JSON; a .md table beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sources = Sources(args.data_dir, args.external_dir, args.renditions_dir, args.bcn_dir)
    results = []
    for position, version_dir in enumerate(args.version_dir):
        result = measure_version(version_dir, sources, args.bootstrap, not args.no_cost,
                                 use_context=not args.neutral_context)
        result["name"] = args.name[position] if position < len(args.name) else str(version_dir)
        results.append(result)
    write_results(args.out, results, comparison_markdown(results))
    return 0


def write_results(out: Path, results: Any, markdown: str) -> None:
    """`out` (JSON) and its Markdown table beside it (`.md`), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    raise SystemExit(main())
