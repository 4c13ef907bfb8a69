"""HAM10000 records: read and validate the metadata and images, and split them by lesion.

Layouts read: `metadata.csv` or `HAM10000_metadata.csv` (or the Dataverse `.tab`) in `data_dir`,
with the images in `data_dir/images/`, in `data_dir` itself, or spread over several sub-folders
(Kaggle's `HAM10000_images_part_1/` and `HAM10000_images_part_2/`). No TensorFlow here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dermserve.core.context import ContextBatch, lenient_context
from dermserve.core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.trainer.errors import DataError

logger = logging.getLogger(__name__)

HAM10000_LABELS: tuple[str, ...] = tuple(HAM10000_DISPLAY_NAMES)
"""The dx codes, in the order the network's outputs use."""

METADATA_NAMES = ("metadata.csv", "HAM10000_metadata.csv", "HAM10000_metadata.tab",
                  "HAM10000_metadata")
"""Metadata file names tried in order: ours, Kaggle's, and Dataverse's (tab-separated)."""

REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LISTED_OFFENDERS = 5
"""How many offending ids an error message names: enough to find the problem, short to read."""

DEFAULT_VAL_FRACTION = 0.15  # of each class's lesions: ~1,100 lesions, enough for calibration
DEFAULT_TEST_FRACTION = 0.15  # of each class's lesions: keeps >= 10 df lesions held out
MANIFEST_FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
RENDITION_SEPARATOR = "@"
"""A second rendition's records are keyed `<image_id>@<rendition>` (the image ids stay unique)."""
EXTRA_LABELS_FILE = "labels.csv"
EXTRA_SPLIT_COLUMN = "isic2017_split"
EXTRA_TRAIN_SPLIT = "train"
EXTERNAL_CHECK_SPLITS = ("validation", "test")
"""ISIC 2017's held-back splits: the external check, never trained, tuned or thresholded on."""


@dataclass(frozen=True)
class Record:
    """One image and its metadata."""

    image_id: str
    lesion_id: str
    dx: str
    path: Path
    age: float | None
    sex: str
    localization: str
    dx_type: str


def record_contexts(records: Sequence[Record]) -> ContextBatch:
    """The records' age, sex and site as a version's context inputs, as a caller would send them
    (a value the metadata gets wrong, or a site outside the documented ones, is unknown)."""
    return ContextBatch.of([lenient_context(record.age, record.sex, record.localization)
                            for record in records])


def _offenders(items: Iterable[str]) -> str:
    items = sorted(set(items))
    shown = ", ".join(items[:MAX_LISTED_OFFENDERS])
    more = len(items) - MAX_LISTED_OFFENDERS
    return f"{shown} (and {more} more)" if more > 0 else shown


def find_metadata(data_dir: Path) -> Path:
    """The metadata file of `data_dir`, trying the known names in order."""
    for name in METADATA_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"no metadata file in {data_dir}: expected one of {', '.join(METADATA_NAMES)}")


def read_metadata(path: Path) -> list[dict[str, str]]:
    """The metadata rows, with every required column checked."""
    delimiter = "\t" if path.suffix == ".tab" else ","
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [name.strip().strip('"') for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                            f"found {', '.join(columns) or 'no header'}")
        reader.fieldnames = columns
        rows = [{key: (value or "").strip() for key, value in row.items() if key} for row in reader]
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


def image_folders(data_dir: Path) -> list[Path]:
    """`data_dir`, `data_dir/images` and every other sub-folder (Kaggle's part_1/part_2)."""
    subfolders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [data_dir, *subfolders]


def index_images(folders: Sequence[Path]) -> dict[str, Path]:
    """Map image ids (file stems) to paths; the first folder that has an id wins."""
    index: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                index.setdefault(path.stem, path)
    return index


def _parse_age(text: str) -> float | None:
    try:
        age = float(text)
    except ValueError:
        return None
    return None if math.isnan(age) else age


def _check_rows(rows: Sequence[dict[str, str]], labels: Sequence[str], source: Path) -> None:
    unknown = [row["dx"] or "<empty>" for row in rows if row["dx"] not in labels]
    if unknown:
        raise DataError(f"{source}: unknown dx code(s) {_offenders(unknown)}; "
                        f"expected one of {', '.join(labels)}")
    counts = Counter(row["image_id"] for row in rows)
    duplicates = [image_id for image_id, count in counts.items() if count > 1]
    if duplicates:
        raise DataError(f"{source}: duplicate image_id(s) {_offenders(duplicates)}")
    empty = [f"row {n + 2}" for n, row in enumerate(rows) if not row["image_id"] or
             not row["lesion_id"]]
    if empty:
        raise DataError(f"{source}: empty image_id or lesion_id at {_offenders(empty)}")


def _check_lesions(records: Sequence[Record], source: Path) -> None:
    """A lesion has one diagnosis; otherwise a stratified lesion split is undefined."""
    diagnoses: dict[str, set[str]] = defaultdict(set)
    for record in records:
        diagnoses[record.lesion_id].add(record.dx)
    mixed = [lesion for lesion, codes in diagnoses.items() if len(codes) > 1]
    if mixed:
        raise DataError(f"{source}: lesion(s) with several dx codes: {_offenders(mixed)}")


def load_records(data_dir: Path, labels: Sequence[str] = HAM10000_LABELS) -> list[Record]:
    """Read and validate the metadata and find every image; raise DataError on any problem."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    source = find_metadata(data_dir)
    rows = read_metadata(source)
    _check_rows(rows, labels, source)
    images = index_images(image_folders(data_dir))
    missing = [row["image_id"] for row in rows if row["image_id"] not in images]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {source} not found under {data_dir}: "
                        f"{_offenders(missing)}")
    records = [Record(image_id=row["image_id"], lesion_id=row["lesion_id"], dx=row["dx"],
                      path=images[row["image_id"]], age=_parse_age(row["age"]),
                      sex=row["sex"] or "unknown", localization=row["localization"] or "unknown",
                      dx_type=row["dx_type"]) for row in rows]
    _check_lesions(records, source)
    logger.info("loaded %d images of %d lesions from %s", len(records),
                len({r.lesion_id for r in records}), data_dir)
    return records


def label_indices(records: Sequence[Record], labels: Sequence[str]) -> np.ndarray:
    """The class index of each record's dx in `labels` (int64 [N])."""
    position = {label: k for k, label in enumerate(labels)}
    try:
        return np.array([position[record.dx] for record in records], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"dx code {exc.args[0]!r} is not in the label list") from exc


def ham_priors(data_dir: Path) -> np.ndarray:
    """HAM10000's class frequencies (the priors sklesion's probabilities follow, which the
    two-origin model divides them by)."""
    y = label_indices(load_records(data_dir), HAM10000_LABELS)
    return np.bincount(y, minlength=len(HAM10000_LABELS)) / len(y)


@dataclass(frozen=True)
class Split:
    """Train, validation and test records, grouped by lesion; `seed` reproduces it."""

    labels: tuple[str, ...]
    seed: int
    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION

    def parts(self) -> dict[str, tuple[Record, ...]]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "labels": list(self.labels),
            "seed": self.seed,
            "fractions": {"val": self.val_fraction, "test": self.test_fraction},
            "grouped_by": "lesion_id",
            "splits": {name: [{"image_id": r.image_id, "lesion_id": r.lesion_id, "dx": r.dx}
                              for r in part] for name, part in self.parts().items()},
        }

    def save(self, path: Path) -> None:
        """Write the JSON manifest: enough to rebuild the split from the same records."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_manifest(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, records: Sequence[Record]) -> Split:
        """Rebuild a saved split from `records`; every manifest entry must match a record."""
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
            by_id = {record.image_id: record for record in records}
            parts = {name: tuple(_manifest_record(entry, by_id, path)
                                 for entry in manifest["splits"][name]) for name in SPLIT_NAMES}
            return cls(labels=tuple(manifest["labels"]), seed=int(manifest["seed"]),
                       val_fraction=float(manifest["fractions"]["val"]),
                       test_fraction=float(manifest["fractions"]["test"]), **parts)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read split manifest {path}: {exc!r}") from exc


def _manifest_record(entry: dict[str, str], by_id: dict[str, Record], path: Path) -> Record:
    record = by_id.get(entry["image_id"])
    if record is None or record.lesion_id != entry["lesion_id"] or record.dx != entry["dx"]:
        raise DataError(f"split manifest {path} does not match the data: image "
                        f"{entry['image_id']} is missing or has another lesion or dx")
    return record


def _lesions_by_class(records: Sequence[Record]) -> dict[str, list[str]]:
    lesions: dict[str, set[str]] = defaultdict(set)
    for record in records:
        lesions[record.dx].add(record.lesion_id)
    return {dx: sorted(ids) for dx, ids in sorted(lesions.items())}


def _held_out_count(count: int, fraction: float) -> int:
    """Lesions of one class for a held-out split: at least one when the class has three."""
    wanted = round(count * fraction)
    return max(wanted, 1) if count >= 3 and fraction > 0 else wanted


def split_by_lesion(records: Sequence[Record], seed: int,
                    val_fraction: float = DEFAULT_VAL_FRACTION,
                    test_fraction: float = DEFAULT_TEST_FRACTION,
                    labels: Sequence[str] = HAM10000_LABELS) -> Split:
    """Split by lesion (no lesion in two splits), stratified by dx: each class's lesions are
    shuffled with `seed` and cut into test, val and train by the fractions."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"bad split fractions val={val_fraction} test={test_fraction}")
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for lesions in _lesions_by_class(records).values():
        order = [lesions[i] for i in rng.permutation(len(lesions))]
        n_test = _held_out_count(len(order), test_fraction)
        n_val = _held_out_count(len(order) - n_test, val_fraction / (1 - test_fraction))
        for position, lesion in enumerate(order):
            assignment[lesion] = ("test" if position < n_test else
                                  "val" if position < n_test + n_val else "train")
    parts = {name: tuple(r for r in records if assignment[r.lesion_id] == name)
             for name in SPLIT_NAMES}
    return Split(labels=tuple(labels), seed=seed, val_fraction=val_fraction,
                 test_fraction=test_fraction, **parts)


def base_image_id(key: str) -> str:
    """The HAM10000 image id of a record's key, whichever rendition it is."""
    return key.split(RENDITION_SEPARATOR, 1)[0]


def load_rendition(rendition_dir: Path, records: Sequence[Record]) -> list[Record]:
    """Records of a second rendition of `records`' images (same ids, lesions and labels; e.g.
    the 224x224 central crops): one per image found in `rendition_dir`."""
    rendition_dir = Path(rendition_dir)
    if not rendition_dir.is_dir():
        raise DataError(f"rendition directory {rendition_dir} does not exist")
    images = index_images(image_folders(rendition_dir))
    name = rendition_dir.name
    found = [replace(r, image_id=f"{r.image_id}{RENDITION_SEPARATOR}{name}",
                     path=images[r.image_id]) for r in records if r.image_id in images]
    if not found:
        raise DataError(f"{rendition_dir}: none of the {len(records)} images is there")
    logger.info("rendition %s: %d of %d images", name, len(found), len(records))
    return found


def load_labelled_folder(data_dir: Path, splits: Sequence[str],
                         labels: Sequence[str] = HAM10000_LABELS) -> list[Record]:
    """Records of another source's `labels.csv` (`image_id,dx,isic2017_split`, images in
    `images/`), keeping the rows of `splits`. Each image is its own lesion (the source gives no
    lesion ids): these records are only ever trained on, or only ever measured."""
    data_dir = Path(data_dir)
    path = data_dir / EXTRA_LABELS_FILE
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get(EXTRA_SPLIT_COLUMN) in splits]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    unknown = [row["dx"] for row in rows if row["dx"] not in labels]
    if unknown:
        raise DataError(f"{path}: unknown dx code(s) {_offenders(unknown)}")
    images = index_images(image_folders(data_dir))
    missing = [row["image_id"] for row in rows if row["image_id"] not in images]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {path} missing: {_offenders(missing)}")
    return [Record(image_id=row["image_id"], lesion_id=f"{data_dir.name}:{row['image_id']}",
                   dx=row["dx"], path=images[row["image_id"]], age=None, sex="unknown",
                   localization="unknown", dx_type=data_dir.name) for row in rows]


LESION_LABELS_FILE = "labels.csv"
OUTSIDE_CLASSES = ("scc",)
"""Diagnoses a second external check may hold beyond the seven (BCN-84's invasive squamous cell
carcinomas): kept apart, reported on their own, never in the seven-class figures."""


def _age(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def load_lesion_labelled_folder(data_dir: Path,
                                labels: Sequence[str] = HAM10000_LABELS) -> list[Record]:
    """Records of an external check with lesion ids and context (BCN-84's `labels.csv`:
    `image_id,dx,lesion_id,age_approx,sex,anatom_site_general,...`, images in `images/`);
    `OUTSIDE_CLASSES` rows are kept with their own dx. Only ever measured."""
    data_dir = Path(data_dir)
    path = data_dir / LESION_LABELS_FILE
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    unknown = [row.get("dx", "") for row in rows
               if row.get("dx") not in (*labels, *OUTSIDE_CLASSES)]
    if unknown:
        raise DataError(f"{path}: unknown dx code(s) {_offenders(unknown)}")
    if any(not row.get("lesion_id") for row in rows):
        raise DataError(f"{path}: rows without a lesion_id")
    images = index_images(image_folders(data_dir))
    missing = [row["image_id"] for row in rows if row["image_id"] not in images]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {path} missing: {_offenders(missing)}")
    return [Record(image_id=row["image_id"], lesion_id=row["lesion_id"], dx=row["dx"],
                   path=images[row["image_id"]], age=_age(row.get("age_approx")),
                   sex=row.get("sex") or "unknown",
                   localization=row.get("anatom_site_general") or "unknown",
                   dx_type=data_dir.name) for row in rows]


def with_extra_training(split: Split, extra: Sequence[Record]) -> Split:
    """`split` with `extra` records (another source's) added to its training part only."""
    return replace(split, train=(*split.train, *extra))
