"""The output store: a directory per job on storage the API and the workers share.

    <output_dir>/<job_id>/inputs/<index>.img          inline images, spooled at submission
    <output_dir>/<job_id>/chunks/<chunk>.input.json    the chunk's image references
    <output_dir>/<job_id>/chunks/<chunk>.jsonl         the chunk's results, one line per image
    <output_dir>/<job_id>/results.jsonl, results.csv,  the exports, written when the job succeeds
                          results.ndjson               (one file per `ResultExporter` in EXPORTERS;
                                                       results.ndjson is FHIR, core/fhir.py)

A CSV cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage
return, as a reference named `=HYPERLINK(...)` does) is written with a leading single quote
(OWASP's rule for CSV injection); numbers are written as they are.

Every file is written to a temporary name and renamed, so a reader never sees half a file, and a
chunk that runs again (its worker was killed) replaces its file instead of adding to it: one
result per image, whatever happened.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from dermserve.batch.references import ImageRef, RowContext, printable
from dermserve.core import fhir
from dermserve.core.errors import DermserveError, InvalidRequest
from dermserve.core.prediction import Abstention, DicomReference, LabelProbability, Prediction

EXPORT_JSONL = "results.jsonl"
EXPORT_CSV = "results.csv"
EXPORT_NDJSON = "results.ndjson"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


@dataclass(frozen=True)
class ImageError:
    """Why one image has no classification (mirrors dermserve.v1.ImageError)."""

    code: str
    reason: str
    message: str

    @classmethod
    def from_exception(cls, error: DermserveError) -> ImageError:
        return cls(error.status, error.reason, error.message)


@dataclass(frozen=True)
class ImageResult:
    """One image's outcome: a classification or an error, never both, never neither."""

    index: int
    reference: str
    model_name: str = ""
    model_version: int = 0
    probabilities: tuple[tuple[str, str, float], ...] = ()
    abstention: str = "NONE"
    ood_score: float = 0.0
    error: ImageError | None = None
    dicom: DicomReference | None = None  # the DICOM object's UIDs, when the image was one
    context_used: bool = False  # the version used the image's patient context

    @property
    def abstained(self) -> bool:
        return self.error is None and self.abstention != "NONE"

    @property
    def top_label(self) -> str:
        return self.probabilities[0][0] if self.probabilities else ""

    @classmethod
    def classified(cls, index: int, reference: str, prediction: Prediction) -> ImageResult:
        probabilities = tuple((p.label, p.display_name, p.probability)
                              for p in prediction.probabilities)
        # printable: a job queued before references were made printable may still carry raw
        # file name bytes, which no CSV, JSON or protobuf string can hold.
        return cls(index, printable(reference), prediction.model_name, prediction.model_version,
                   probabilities, prediction.abstention.value, prediction.ood_score,
                   dicom=prediction.dicom, context_used=prediction.context_used)

    def prediction(self) -> Prediction:
        """A classified image's result as the classifier gave it (for the FHIR export)."""
        return Prediction(
            "", self.model_name, self.model_version,
            tuple(LabelProbability(*item) for item in self.probabilities),
            Abstention(self.abstention), self.ood_score, self.dicom,
            context_used=self.context_used)

    @classmethod
    def failed(cls, index: int, reference: str, error: DermserveError) -> ImageResult:
        return cls(index, printable(reference), error=ImageError.from_exception(error))

    def to_json(self) -> str:
        raw = asdict(self)
        raw["probabilities"] = [list(item) for item in self.probabilities]
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ImageResult:
        raw = json.loads(text)
        error = ImageError(**raw["error"]) if raw.get("error") else None
        return cls(index=int(raw["index"]), reference=raw["reference"],
                   model_name=raw.get("model_name", ""),
                   model_version=int(raw.get("model_version", 0)),
                   probabilities=tuple((str(a), str(b), float(c))
                                       for a, b, c in raw.get("probabilities", [])),
                   abstention=raw.get("abstention", "NONE"),
                   ood_score=float(raw.get("ood_score", 0.0)), error=error,
                   dicom=DicomReference(**raw["dicom"]) if raw.get("dicom") else None,
                   context_used=bool(raw.get("context_used", False)))


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` to a temporary file beside `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class ResultStore:
    """Files of every job under one output directory."""

    def __init__(self, output_dir: Path,
                 exporters: Sequence[ResultExporter] | None = None) -> None:
        self.output_dir = output_dir
        self.exporters = tuple(exporters) if exporters is not None else EXPORTERS

    def job_dir(self, job_id: str) -> Path:
        if not job_id.isalnum():  # job ids are hex; anything else must not become a path
            raise InvalidRequest("malformed job id (not echoed)", "BAD_JOB_ID")
        return self.output_dir / job_id

    def inputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "inputs"

    def chunk_path(self, job_id: str, chunk: int, suffix: str) -> Path:
        return self.job_dir(job_id) / "chunks" / f"{chunk:06d}{suffix}"

    def spool_inline(self, job_id: str, index: int, data: bytes) -> str:
        path = self.inputs_dir(job_id) / f"{index:08d}.img"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path.resolve())

    def write_chunk_inputs(self, job_id: str, chunk: int, refs: Sequence[ImageRef]) -> None:
        """Each image's reference, path and manifest context (inside the job's directory, as its
        images are; never logged)."""
        payload = json.dumps([[ref.reference, ref.path] if ref.context is None else
                              [ref.reference, ref.path, dataclasses.astuple(ref.context)]
                              for ref in refs])
        write_atomically(self.chunk_path(job_id, chunk, ".input.json"), [payload])

    def read_chunk_inputs(self, job_id: str, chunk: int) -> list[ImageRef]:
        text = self.chunk_path(job_id, chunk, ".input.json").read_text(encoding="utf-8")
        return [ImageRef(entry[0], entry[1],
                         RowContext(*entry[2]) if len(entry) > 2 else None)
                for entry in json.loads(text)]

    def write_chunk_results(self, job_id: str, chunk: int, results: Sequence[ImageResult]) -> None:
        write_atomically(self.chunk_path(job_id, chunk, ".jsonl"),
                         (result.to_json() + "\n" for result in results))

    def read_chunk_results(self, job_id: str, chunk: int) -> list[ImageResult]:
        path = self.chunk_path(job_id, chunk, ".jsonl")
        with path.open(encoding="utf-8") as handle:
            return [ImageResult.from_json(line) for line in handle if line.strip()]

    def export_paths(self, job_id: str) -> dict[str, Path]:
        """Each export's file, by format name ("jsonl", "csv", "ndjson")."""
        return {exporter.name: self.job_dir(job_id) / exporter.filename
                for exporter in self.exporters}

    def export(self, job_id: str, chunks: Iterable[int]) -> dict[str, Path]:
        """Write every export of `chunks`, in image order; returns their files by format."""
        ordered = sorted(chunks)
        labels = self._labels(job_id, ordered)
        paths = self.export_paths(job_id)
        for exporter in self.exporters:
            write_atomically(paths[exporter.name],
                             exporter.lines(self._iter(job_id, ordered), labels, job_id))
        return paths

    def _iter(self, job_id: str, chunks: Sequence[int]) -> Iterator[ImageResult]:
        for chunk in chunks:
            yield from self.read_chunk_results(job_id, chunk)

    def _labels(self, job_id: str, chunks: Sequence[int]) -> list[str]:
        return labels_of(self._iter(job_id, chunks))


class ResultExporter(Protocol):
    """One format of a job's results: a new format (FHIR, Parquet...) is one more class here,
    added to EXPORTERS; the job's files, GetBatchJob and the CLI follow."""

    name: str  # the format's name: a key of export_paths, a `--format` of the CLI
    filename: str  # its file in the job's directory

    def lines(self, results: Iterable[ImageResult], labels: Sequence[str],
              job_id: str) -> Iterator[str]:
        """The file's text, in pieces; `labels` is the answering version's class list, `job_id`
        the server's id of the job."""
        ...


class JsonlExporter:
    """One JSON object per image, as the chunks store them."""

    name = "jsonl"
    filename = EXPORT_JSONL

    def lines(self, results: Iterable[ImageResult], labels: Sequence[str],
              job_id: str) -> Iterator[str]:
        return (result.to_json() + "\n" for result in results)


class CsvExporter:
    """One row per image: fixed columns, then one `p_<label>` column per class, with cells a
    spreadsheet would run as formulas quoted."""

    name = "csv"
    filename = EXPORT_CSV

    def lines(self, results: Iterable[ImageResult], labels: Sequence[str],
              job_id: str) -> Iterator[str]:
        return csv_lines(results, labels)


class FhirNdjsonExporter:
    """FHIR R4 (R4B) resources, one per line (the Bulk Data NDJSON convention): each classified
    image's DiagnosticReport and Observations (ids named by the job, the image and the version,
    so a re-export is idempotent), then each model version's Device and each DICOM study's
    ImagingStudy once, with every series and instance of the job's images in it. Images that
    failed have no resources (their errors are in the JSONL and CSV exports). Written
    unvalidated (core/fhir.analysis_json says why)."""

    name = "ndjson"
    filename = EXPORT_NDJSON

    def lines(self, results: Iterable[ImageResult], labels: Sequence[str],
              job_id: str) -> Iterator[str]:
        issued = datetime.now(UTC)
        devices: dict[str, fhir.Json] = {}
        dicoms: list[DicomReference] = []
        for result in results:
            if result.error is not None:
                continue
            prediction = result.prediction()
            for resource in fhir.analysis_json(prediction, issued, in_bundle=False,
                                               seed=analysis_seed(job_id, result)):
                if resource["resourceType"] == "Device":
                    devices.setdefault(resource["id"], resource)
                elif resource["resourceType"] not in fhir.SHARED_RESOURCES:
                    yield fhir.resource_json(resource) + "\n"
            if prediction.dicom is not None:
                dicoms.append(prediction.dicom)
        # after every image: a study's ImagingStudy lists all of its series and instances
        for resource in [*devices.values(), *fhir.imaging_studies(dicoms)]:
            yield fhir.resource_json(resource) + "\n"


def analysis_seed(job_id: str, result: ImageResult) -> str:
    """What names an image's report and observations in a job's export: the job, the image's
    position and the answering version (core/fhir.resource_ids)."""
    return f"job/{job_id}/image/{result.index}/version/{result.model_version}"


EXPORTERS: tuple[ResultExporter, ...] = (JsonlExporter(), CsvExporter(), FhirNdjsonExporter())


def labels_of(results: Iterable[ImageResult]) -> list[str]:
    """The class list of the version that answered (the first classified image says)."""
    for result in results:
        if result.probabilities:
            return sorted(label for label, _, _ in result.probabilities)
    return []


CSV_COLUMNS = ["index", "reference", "status", "top_label", "abstained", "abstention_reason",
               "model_name", "model_version", "ood_score", "error_code", "error_reason",
               "error_message"]
DICOM_COLUMNS = ["study_instance_uid", "series_instance_uid", "sop_instance_uid"]
"""After the p_<label> columns, so that the columns before them keep their places."""
CONTEXT_COLUMN = "context_used"
"""Last: 1 when the version used the image's patient context, else 0."""


def csv_lines(results: Iterable[ImageResult], labels: Sequence[str]) -> Iterator[str]:
    """CSV rows: fixed columns, one `p_<label>` column per class of the model version, then the
    DICOM UIDs (empty for a JPEG or PNG) and whether the patient context was used."""
    buffer = _LineBuffer()
    writer = csv.writer(buffer)
    header = [*CSV_COLUMNS, *(f"p_{label}" for label in labels), *DICOM_COLUMNS, CONTEXT_COLUMN]
    writer.writerow([csv_cell(name) for name in header])
    yield buffer.take()
    for result in results:
        writer.writerow([csv_cell(cell) for cell in csv_row(result, labels)])
        yield buffer.take()


def csv_cell(value: object) -> object:
    """`value`, or text that a spreadsheet shows instead of running it as a formula."""
    if (isinstance(value, str) and value.startswith(FORMULA_PREFIXES)
            and not NUMBER.fullmatch(value)):
        return "'" + value
    return value


def csv_row(result: ImageResult, labels: Sequence[str]) -> list[object]:
    error = result.error
    probabilities = {label: p for label, _, p in result.probabilities}
    status = "error" if error else ("abstained" if result.abstained else "classified")
    return [result.index, result.reference, status, result.top_label, int(result.abstained),
            "" if error else result.abstention, result.model_name,
            result.model_version or "", "" if error else f"{result.ood_score:.6g}",
            error.code if error else "", error.reason if error else "",
            error.message if error else "",
            *(f"{probabilities[label]:.6f}" if label in probabilities else ""
              for label in labels),
            *dicom_cells(result.dicom), int(result.context_used)]


def dicom_cells(dicom: DicomReference | None) -> list[str]:
    if dicom is None:
        return [""] * len(DICOM_COLUMNS)
    return [dicom.study_instance_uid, dicom.series_instance_uid, dicom.sop_instance_uid]


class _LineBuffer:
    """A write target for csv.writer that hands each row back as a string."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text
