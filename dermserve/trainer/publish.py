"""Atomic publication of a version into `<model_base>/<model_name>/`, behind a promotion gate.

1. The gate: the new held-out balanced accuracy must not be below the latest version's (read from
   its `assets.extra/dermserve.json` metrics), unless forced.
2. The version is written into `<model_dir>/.tmp-<uuid>`: not a number, so neither TF Serving nor
   the embedded backend looks at it.
3. It is loaded back and must reproduce the predictions recorded at training time on a sample
   (`assets.extra/sample_predictions.json`), and pass any other check (the sanity images).
4. `os.rename` moves it to the next version number; a reader sees no version or a complete one.
   If another publisher took that number first, the rename fails and the next number is tried.
A failed check removes the temporary directory: no partial version is ever visible.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dermserve.core.context import ContextBatch
from dermserve.core.model_config import CONFIG_RELATIVE_PATH, ModelConfig
from dermserve.trainer.errors import PromotionRefused, PublishError

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
SAVED_MODEL_FILE = "saved_model.pb"
SAMPLE_RELATIVE_PATH = Path("assets.extra") / "sample_predictions.json"
DEFAULT_PROBABILITY_TOLERANCE = 1e-4
"""Max |difference| between recorded and reloaded probabilities: float32 graph vs. eager Keras
differ by ~1e-6; anything near 1e-4 means a different graph or different preprocessing."""
DEFAULT_OOD_RELATIVE_TOLERANCE = 1e-3  # float32 graph vs. float64 numpy Mahalanobis distances
MAX_RENAME_ATTEMPTS = 100  # concurrent publishers racing for numbers; more means something is wrong
GATE_METRIC = "balanced_accuracy"

Step = Callable[[Path], None]
"""Writes into, or checks, a candidate version directory."""


@dataclass(frozen=True)
class SamplePredictions:
    """Predictions recorded at training time, which the published graph must reproduce."""

    image_ids: list[str]
    probabilities: list[list[float]]
    ood_scores: list[float]

    def write(self, version_dir: Path) -> None:
        path = version_dir / SAMPLE_RELATIVE_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def read(cls, version_dir: Path) -> SamplePredictions:
        raw = json.loads((version_dir / SAMPLE_RELATIVE_PATH).read_text(encoding="utf-8"))
        return cls(**raw)


def version_numbers(model_dir: Path) -> list[int]:
    """Published versions (positive integer names holding a saved_model.pb), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.name.isdigit() and int(p.name) > 0 and (p / SAVED_MODEL_FILE).is_file())


def recorded_metric(version_dir: Path, name: str = GATE_METRIC) -> float | None:
    """A version's recorded metric, or None when it has none."""
    if not (version_dir / CONFIG_RELATIVE_PATH).is_file():
        return None
    value = ModelConfig.read(version_dir).metrics.get(name)
    return float(value) if isinstance(value, int | float) else None


def check_promotion(model_dir: Path, balanced_accuracy: float, force: bool = False) -> None:
    """Refuse a version scoring below the latest one, unless `force`."""
    versions = version_numbers(model_dir)
    if not versions:
        return
    current = recorded_metric(model_dir / str(versions[-1]))
    if current is None or balanced_accuracy >= current:
        return
    refuse_unless_forced(f"held-out {GATE_METRIC} {balanced_accuracy:.4f} is below version "
                         f"{versions[-1]}'s {current:.4f}", force)


def refuse_unless_forced(message: str, force: bool) -> None:
    """A gate's refusal: PromotionRefused, or with `force` a warning and on we go."""
    if force:
        logger.warning("%s; publishing anyway (forced)", message)
        return
    raise PromotionRefused(f"{message}; pass --force to publish anyway")


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rename_to_next_version(staging: Path, model_dir: Path) -> Path:
    """Rename `staging` to max(existing) + 1, moving up when another publisher wins a number."""
    candidate = max([0, *version_numbers(model_dir)]) + 1
    for _ in range(MAX_RENAME_ATTEMPTS):
        target = model_dir / str(candidate)
        if not target.exists():
            try:
                os.rename(staging, target)  # fails on a non-empty target: the race is safe
                _fsync_dir(model_dir)
                return target
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        candidate += 1
    raise PublishError(f"no free version number under {model_dir} after "
                       f"{MAX_RENAME_ATTEMPTS} attempts")


def publish(model_dir: Path, write: Step, checks: Sequence[Step] = ()) -> Path:
    """Write a candidate with `write`, run `checks` on it, then rename it into place."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        write(staging)
        for check in checks:
            check(staging)
        version_dir = rename_to_next_version(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("published %s", version_dir)
    return version_dir


def verify_reproduces(version_dir: Path, image_paths: Sequence[Path],
                      contexts: ContextBatch | None = None,
                      probability_tolerance: float = DEFAULT_PROBABILITY_TOLERANCE,
                      ood_relative_tolerance: float = DEFAULT_OOD_RELATIVE_TOLERANCE) -> None:
    """Load the candidate like the service does and compare with its recorded sample, whose
    images are at `image_paths` (in the order of its `image_ids`) and whose patient context is
    `contexts` (used only when the version takes context; the sample was predicted with it)."""
    from dermserve.trainer.served import ServedVersion, read_images

    sample = SamplePredictions.read(version_dir)
    served = ServedVersion(version_dir)
    if served.metadata_config() != served.config:
        raise PublishError(f"{version_dir}: the metadata signature's config differs from "
                           f"{CONFIG_RELATIVE_PATH}")
    if [Path(p).stem for p in image_paths] != sample.image_ids:
        raise PublishError(f"{version_dir}: sample images do not match the recorded image ids")
    probabilities, ood = served.classify(read_images(image_paths), contexts)
    gap = float(np.max(np.abs(probabilities - np.asarray(sample.probabilities))))
    if gap > probability_tolerance:
        raise PublishError(f"{version_dir}: reloaded probabilities differ from the recorded ones "
                           f"by {gap:.2e} (> {probability_tolerance:.0e})")
    expected = np.asarray(sample.ood_scores)
    ood_gap = float(np.max(np.abs(ood - expected) / np.maximum(np.abs(expected), 1.0)))
    if ood_gap > ood_relative_tolerance:
        raise PublishError(f"{version_dir}: reloaded OOD scores differ from the recorded ones "
                           f"by {ood_gap:.2e} relative (> {ood_relative_tolerance:.0e})")
    logger.info("%s reproduces its %d recorded predictions (max gap %.1e)", version_dir.name,
                len(sample.image_ids), gap)
