"""The whole trainer run: data -> split -> train -> calibrate -> thresholds -> evaluate -> publish.

Every decision (temperature, abstention thresholds, melanoma operating point) is made on the
validation split; the test split is only measured. Training is delegated to `trainer.train`
(resumable; returns at once when `workdir/network.weights.h5` exists), so running the same command
again after training finishes only evaluates and publishes. Tests inject a tiny trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermserve.core.errors import FailedPrecondition
from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, ModelConfig
from dermserve.trainer import abstention, datareport, evaluate, modelcard, report
from dermserve.trainer.calibration import CalibrationResult, calibrate, softmax
from dermserve.trainer.data import (
    EXTRA_TRAIN_SPLIT,
    RENDITION_SEPARATOR,
    Record,
    Split,
    label_indices,
    load_labelled_folder,
    load_records,
    load_rendition,
    record_contexts,
    split_by_lesion,
    with_extra_training,
)
from dermserve.trainer.errors import DataError, SanityCheckFailed
from dermserve.trainer.external import Sources, check_external_gate, measure_version
from dermserve.trainer.features import FeatureStatistics
from dermserve.trainer.publish import SamplePredictions, check_promotion, publish, verify_reproduces
from dermserve.trainer.served import ServedVersion
from dermserve.trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
REPORT_DIR = "report"
PREDICTIONS_DIR = "predictions"
HOLDOUT = "holdout"  # the predictions of the held-out extra images (TrainSettings.extra_holdout)
FINAL_WEIGHTS = "network.weights.h5"  # trainer.train's finished network (invalidates caches)

TrainFn = Callable[[Split, TrainSettings, Path], Any]
PredictFn = Callable[..., tuple[np.ndarray, np.ndarray]]
"""predict(network, records, spec, tta=False) -> (logits [N, K], pooled features [N, D])."""


@dataclass(frozen=True)
class NetworkHooks:
    """How the pipeline trains and runs the network; `default_hooks` uses trainer.train."""

    train: TrainFn
    predict: PredictFn
    # What the network is, for the config, the report and the model card (an ensemble says so);
    # empty: "<backbone> (seed N)".
    name: str = ""

    def network_name(self, settings: TrainSettings) -> str:
        return self.name or f"{settings.backbone} (seed {settings.seed})"


def default_hooks() -> NetworkHooks:
    from dermserve.trainer.train import predict_network, train_network

    return NetworkHooks(train_network, predict_network)


@dataclass(frozen=True)
class Outputs:
    """Logits and features of one split (plus TTA logits when measured)."""

    y: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    tta_logits: np.ndarray | None = None


@dataclass
class Decisions:
    """What validation decided, and the held-out measurements."""

    calibration: CalibrationResult
    statistics: FeatureStatistics
    rule: Any
    melanoma_threshold: float | None
    test: dict[str, Any]
    test_tta: dict[str, Any] | None
    abstention_summary: dict[str, Any]
    sanity: list[dict[str, Any]] = field(default_factory=list)


def training_records(settings: TrainSettings) -> tuple[list[Record], list[Record], list[Record]]:
    """(HAM10000 records, in every rendition given; other sources' training-only records; their
    held-out rows, `extra_records`)."""
    assert settings.data_dir is not None
    records = load_records(settings.data_dir)
    if settings.renditions_dir is not None:
        records += load_rendition(settings.renditions_dir, records)
    return records, *extra_records(settings)


def extra_records(settings: TrainSettings) -> tuple[list[Record], list[Record]]:
    """Another source's train rows as (trained on, held out): with `extra_holdout`, every second
    row in its labels.csv order is held out (the classes stay in their proportions there: the
    file is in image-id order, which follows no class), else none is."""
    if settings.extra_train_dir is None:
        return [], []
    rows = load_labelled_folder(settings.extra_train_dir, (EXTRA_TRAIN_SPLIT,))
    return (rows[0::2], rows[1::2]) if settings.extra_holdout else (rows, [])


def prepare_split(records: Sequence[Record], settings: TrainSettings, workdir: Path,
                  extra: Sequence[Record] = ()) -> Split:
    """The workdir's saved split if there is one (a resumed run must not re-split), else a new
    lesion-grouped split (every rendition of a lesion's images on one side; `extra` records
    only in train), saved."""
    path = workdir / SPLIT_FILE
    seed = settings.effective_split_seed
    if path.exists():
        split = Split.load(path, [*records, *extra])
        if split.seed != seed:
            raise DataError(f"{path} was made with seed {split.seed}, not {seed}; "
                            "use another workdir or the same split seed")
        logger.info("reusing the split in %s", path)
        return split
    split = with_extra_training(split_by_lesion(records, seed, settings.val_fraction,
                                                settings.test_fraction), extra)
    split.save(path)
    return split


def _cached_outputs(path: Path, records: Sequence[Record], workdir: Path) -> Outputs | None:
    weights = workdir / FINAL_WEIGHTS
    if not path.exists() or (weights.exists() and weights.stat().st_mtime > path.stat().st_mtime):
        return None
    with np.load(path) as saved:
        if list(saved["image_ids"]) != [r.image_id for r in records]:
            return None
        tta = saved["tta_logits"] if "tta_logits" in saved.files else None
        return Outputs(saved["y"], saved["logits"], saved["features"], tta)


def predict_split(name: str, records: Sequence[Record], network: Any, hooks: NetworkHooks,
                  settings: TrainSettings, labels: Sequence[str], tta: bool) -> Outputs:
    """Predictions of one split, cached in the workdir (a publish retry need not re-predict)."""
    path = settings.workdir / PREDICTIONS_DIR / settings.weights_dtype / f"{name}.npz"
    cached = _cached_outputs(path, records, settings.workdir)
    if cached is not None and (cached.tta_logits is not None or not tta):
        logger.info("reusing %s predictions from %s", name, path)
        return cached
    logger.info("predicting %d %s images", len(records), name)
    spec = settings.input_spec()
    logits, features = hooks.predict(network, records, spec)
    tta_logits = hooks.predict(network, records, spec, tta=True)[0] if tta else None
    outputs = Outputs(label_indices(records, labels), logits, features, tta_logits)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"image_ids": np.array([r.image_id for r in records]), "y": outputs.y,
              "logits": logits, "features": features}
    if tta_logits is not None:
        arrays["tta_logits"] = tta_logits
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    return outputs


def primary_rendition(records: Sequence[Record]) -> tuple[Record, ...]:
    return tuple(r for r in records if RENDITION_SEPARATOR not in r.image_id)


def statistics_sample(records: Sequence[Record], limit: int, seed: int) -> tuple[Record, ...]:
    """At most `limit` training records (0: all) for the OOD statistics, every class as fully as
    the budget allows: small classes whole, the large ones (nv) sampled."""
    if limit <= 0 or len(records) <= limit:
        return tuple(records)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Record]] = {}
    for record in records:
        by_class.setdefault(record.dx, []).append(record)
    chosen: list[Record] = []
    budget = limit
    classes = sorted(by_class.values(), key=len)
    for position, members in enumerate(classes):
        take = min(len(members), budget // (len(classes) - position))
        chosen += [members[i] for i in sorted(rng.permutation(len(members))[:take])]
        budget -= take
    return tuple(chosen)


def decide(split: Split, outputs: dict[str, Outputs], settings: TrainSettings) -> Decisions:
    """Fit everything on train/validation, then measure on test."""
    labels, val, test = split.labels, outputs["val"], outputs["test"]
    # the held-out images of another clinic, when there are any, choose the temperature and the
    # melanoma threshold (TrainSettings.extra_holdout says why); coverage stays HAM10000's
    chooser = outputs.get(HOLDOUT, val)
    calibration = calibrate(chooser.logits, chooser.y)
    temperature = calibration.temperature
    statistics = FeatureStatistics.fit(outputs["train"].features, outputs["train"].y,
                                       len(labels), components=settings.ood_components)
    probabilities_val = softmax(val.logits, temperature)
    ood_val = statistics.ood_scores(val.features)
    rule = abstention.choose_rule(probabilities_val, ood_val, settings.ood_quantile,
                                  settings.target_coverage)
    threshold = evaluate.melanoma_threshold(softmax(chooser.logits, temperature), chooser.y,
                                            labels, settings.melanoma_sensitivity)
    groups = [r.lesion_id for r in split.test]

    def measure(logits: np.ndarray) -> dict[str, Any]:
        return evaluate.evaluate(test.y, softmax(logits, temperature), groups, labels, threshold,
                                 settings.bootstrap_samples, settings.seed)

    probabilities_test = softmax(test.logits, temperature)
    selective = {
        "validation": abstention.selective_summary(val.y, probabilities_val, ood_val, rule),
        "test": abstention.selective_summary(test.y, probabilities_test,
                                             statistics.ood_scores(test.features), rule)}
    return Decisions(calibration, statistics, rule, threshold, measure(test.logits),
                     None if test.tta_logits is None else measure(test.tta_logits), selective)


def build_config(split: Split, decisions: Decisions, settings: TrainSettings,
                 network_name: str) -> ModelConfig:
    metrics = evaluate.flat_metrics(decisions.test)
    metrics.update({"melanoma_threshold": decisions.melanoma_threshold,
                    "test_images": decisions.test["images"],
                    "test_lesions": decisions.test["lesions"],
                    "validation_ece_before_scaling": decisions.calibration.ece_before,
                    "validation_ece_after_scaling": decisions.calibration.ece_after})
    if decisions.test_tta is not None:
        metrics.update(evaluate.flat_metrics(decisions.test_tta, prefix="tta_"))
    return ModelConfig(
        labels=split.labels,
        display_names={label: HAM10000_DISPLAY_NAMES.get(label, label) for label in split.labels},
        input=settings.input_spec(), temperature=decisions.calibration.temperature,
        abstention=decisions.rule, metrics=report.plain(metrics),
        description=f"{network_name} on HAM10000; calibrated; "
                    "CC BY-NC 4.0, not a diagnostic device")


def sample_indices(count: int, size: int) -> np.ndarray:
    """Evenly spread indices: the recorded sample covers the whole (class-sorted) test split."""
    return np.unique(np.linspace(0, count - 1, min(size, count)).round().astype(np.int64))


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_reports(version_dir: Path, workdir: Path, report_data: dict[str, Any],
                   plot_inputs: report.PlotInputs, config: ModelConfig) -> None:
    """The report into the version's assets.extra/report/ and the workdir, and the model card."""
    for out_dir in (version_dir / "assets.extra" / REPORT_DIR, workdir / REPORT_DIR):
        report.write_report(out_dir, report_data, plot_inputs)
    modelcard.write_model_card(version_dir, config, report_data)
    # next to report/, not in it: report/ is copied into the next attempt's version
    shutil.copyfile(version_dir / "assets.extra" / modelcard.MODEL_CARD,
                    workdir / modelcard.MODEL_CARD)


def _round_weights(network: Any) -> None:
    """Every measurement below is then made with the weights the version ships."""
    from dermserve.trainer.export import round_weights

    round_weights(network)
    logger.info("network weights rounded to float16")


def run(settings: TrainSettings, hooks: NetworkHooks | None = None) -> Path:
    """Train (or resume), evaluate and publish; returns the new version's directory."""
    if settings.data_dir is None:
        raise DataError("no data directory: pass --data-dir or set DERMSERVE_DATA_DIR")
    hooks = hooks or default_hooks()
    workdir = settings.workdir
    if settings.publish_only and not (workdir / FINAL_WEIGHTS).exists():
        raise FailedPrecondition(f"--publish-only: {workdir / FINAL_WEIGHTS} does not exist "
                                 "(training has not finished)", "NOT_TRAINED")
    workdir.mkdir(parents=True, exist_ok=True)
    records, extra, holdout = training_records(settings)
    split = prepare_split(records, settings, workdir, extra)
    datareport.write_data_report(split, workdir / REPORT_DIR, str(settings.data_dir))
    network = hooks.train(split, settings, workdir)
    if settings.train_only:
        logger.info("--train-only: the trained network is in %s", workdir / FINAL_WEIGHTS)
        return workdir
    if settings.weights_dtype == "float16":
        _round_weights(network)
    # The headline test is the primary rendition (the images every version is compared on); the
    # second rendition of the same test lesions is in the robustness table (trainer.external).
    split = dataclasses.replace(split, test=primary_rendition(split.test))
    parts = {**split.parts(), "train": statistics_sample(split.train, settings.ood_fit_images,
                                                          settings.seed)}
    if holdout:
        parts[HOLDOUT] = tuple(holdout)
    outputs = {name: predict_split(name, part, network, hooks, settings, split.labels,
                                   tta=settings.tta and name == "test")
               for name, part in parts.items()}
    decisions = decide(split, outputs, settings)
    config = build_config(split, decisions, settings, hooks.network_name(settings))
    model_dir = settings.model_base / settings.model_name
    check_promotion(model_dir, decisions.test["metrics"]["balanced_accuracy"]["value"],
                    settings.force)
    return _publish(split, outputs, decisions, config, network, settings, model_dir,
                    hooks.network_name(settings))


def _publish(split: Split, outputs: dict[str, Outputs], decisions: Decisions,
             config: ModelConfig, network: Any, settings: TrainSettings,
             model_dir: Path, network_name: str) -> Path:
    from dermserve.trainer.export import ServingModule, save_version

    test = outputs["test"]
    chosen = sample_indices(len(split.test), settings.sample_predictions)
    probabilities_test = softmax(test.logits, config.temperature)
    ood_test = decisions.statistics.ood_scores(test.features)
    sample = SamplePredictions([split.test[i].image_id for i in chosen],
                               probabilities_test[chosen].tolist(), ood_test[chosen].tolist())
    sample_paths = [split.test[i].path for i in chosen]
    sample_contexts = record_contexts([split.test[i] for i in chosen])
    report_data = assemble_report(split, decisions, settings, network_name)
    plot_inputs = report.PlotInputs(
        split.labels, test.y, probabilities_test, outputs["val"].y, softmax(outputs["val"].logits),
        softmax(outputs["val"].logits, config.temperature),
        decisions.statistics.ood_scores(outputs["val"].features), ood_test,
        max_ood_score=config.abstention.max_ood_score)

    def write(version_dir: Path) -> None:
        module = ServingModule(network, config, decisions.statistics, settings.weights_dtype)
        save_version(module, config, version_dir)
        sample.write(version_dir)
        split.save(version_dir / "assets.extra" / SPLIT_FILE)
        shutil.copytree(settings.workdir / REPORT_DIR, version_dir / "assets.extra" / REPORT_DIR)

    def check_sanity_and_report(version_dir: Path) -> None:
        served = ServedVersion(version_dir)  # loaded once for the sanity images and the checks
        failures = run_sanity(served, decisions, settings)
        report_data["sanity"] = decisions.sanity
        if external_checked(settings):
            report_data["external_check"] = measure_version(
                version_dir, external_sources(settings), settings.bootstrap_samples,
                served=served)
        report_data["model"]["size_bytes"] = _directory_bytes(version_dir)
        inputs = report.PlotInputs(**{**plot_inputs.__dict__, "ood_sanity": np.array(
            [r["ood_score"] for r in decisions.sanity])})
        _write_reports(version_dir, settings.workdir, report_data, inputs, config)
        if external_checked(settings):
            check_external_gate(model_dir, report_data["external_check"],
                                external_sources(settings), settings.force,
                                settings.bootstrap_samples)
        if failures and not settings.allow_sanity_failures:
            details = settings.workdir / REPORT_DIR / report.REPORT_MARKDOWN
            raise SanityCheckFailed(
                f"the version answered {len(failures)} sanity image(s) instead of abstaining: "
                f"{', '.join(failures)}; see {details} (pass --allow-sanity-failures to publish "
                "anyway)")

    version_dir = publish(model_dir, write, [
        lambda version_dir: verify_reproduces(version_dir, sample_paths, sample_contexts),
        check_sanity_and_report])
    logger.info("published version %s with held-out balanced accuracy %.4f", version_dir.name,
                decisions.test["metrics"]["balanced_accuracy"]["value"])
    for name, target in report_data["targets"].items():
        logger.info("target %s %s: %s (%s)", name, target["target"], target["value"],
                    "met" if target["met"] else "NOT met")
    return version_dir


def operating_split(settings: TrainSettings) -> str:
    """What chose the temperature and the melanoma threshold, as the report says it."""
    if settings.extra_holdout and settings.extra_train_dir is not None:
        return (f"the held-out half of {settings.extra_train_dir}'s train split (every second "
                "row, never trained on)")
    return "validation"


def external_checked(settings: TrainSettings) -> bool:
    """Whether the run measures an external check (then the external gate applies too)."""
    return settings.external_dir is not None or settings.bcn_dir is not None


def external_sources(settings: TrainSettings) -> Sources:
    assert settings.data_dir is not None
    return Sources(settings.data_dir, settings.external_dir, settings.renditions_dir,
                   settings.bcn_dir)


def run_sanity(served: ServedVersion, decisions: Decisions, settings: TrainSettings) -> list[str]:
    """Classify the sanity and noise images through the candidate (a loaded
    `trainer.served.ServedVersion`); return those answered."""
    images = (abstention.sanity_images(settings.sanity_dir)
              + abstention.noise_images(settings.seed, settings.noise_images))
    results = abstention.check_sanity(served.classify, images, served.config.labels,
                                      served.config.abstention)
    decisions.sanity = abstention.sanity_as_dicts(results)
    return [r.name for r in results if not r.abstained]


def _training_summary(workdir: Path) -> dict[str, Any]:
    import json

    path = workdir / "training.json"
    if not path.exists():
        return {}
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    summary.pop("settings", None)
    return summary


def assemble_report(split: Split, decisions: Decisions, settings: TrainSettings,
                    network_name: str = "") -> dict[str, Any]:
    """The report dictionary (the JSON's content); sanity results and size are added later."""
    test = decisions.test
    return {
        "model": {"name": settings.model_name,
                  "backbone": network_name or f"{settings.backbone} (seed {settings.seed})",
                  "description": f"input {settings.input_size}x{settings.input_size}, "
                                 f"colour constancy {settings.colour_constancy}",
                  "input": settings.input_spec().__dict__},
        "data": {**datareport.summary(split), "source": str(settings.data_dir),
                 "renditions": None if settings.renditions_dir is None
                 else str(settings.renditions_dir),
                 "extra_training": None if settings.extra_train_dir is None
                 else f"{settings.extra_train_dir} (its train split, training only)"},
        "training": _training_summary(settings.workdir),
        "calibration": decisions.calibration.as_dict(),
        "abstention": {"rule": decisions.rule.__dict__,
                       "rule_description": (
                           f"max_ood_score = {settings.ood_quantile:.2f} quantile of validation "
                           f"OOD scores; min_confidence = {1 - settings.target_coverage:.2f} "
                           "quantile of validation top probabilities"),
                       **decisions.abstention_summary},
        "operating_point": {"melanoma_threshold": decisions.melanoma_threshold,
                            "target_sensitivity": settings.melanoma_sensitivity,
                            "chosen_on": operating_split(settings)},
        "test": test,
        "test_tta": decisions.test_tta,
        "targets": report.target_results(test["metrics"], settings.input_size),
        "sanity": [],
    }
