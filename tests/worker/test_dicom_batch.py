"""Batch jobs of DICOM files (real redis-server, in-process worker, real classifier core): the
UIDs travel in the results, the CSV columns and the FHIR NDJSON export."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class
from pydicom import dcmread

from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.batch.results import FhirNdjsonExporter, labels_of
from dermserve.protocol.results import image_result, result_message
from dermserve.worker.settings import WorkerSettings
from devtools.dicom_sample import to_bytes
from tests.dicom_files import (
    HAM_IMAGE_NAMES,
    PLANTED,
    bundled,
    dermoscopic_dicom,
    dicom_dataset,
    ham_dicom,
    ham_image,
)
from tests.hostile_images import with_item_bomb
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images


def write_dicom_folder(folder: Path) -> dict[str, str]:
    """Three DICOM photographs, a CT slice, a JPEG named .dcm; the SOP instance UID by name."""
    folder.mkdir(parents=True)
    files = {"a.dcm": ham_dicom("uncompressed-rgb", HAM_IMAGE_NAMES[0]),
             "b.dcm": ham_dicom("jpeg-ybr422", HAM_IMAGE_NAMES[1]),
             "c.dcm": dermoscopic_dicom(HAM_IMAGE_NAMES[2]),
             "ct.dcm": bundled("CT_small.dcm")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    write_images(folder / "jpeg", 1)
    shutil.move(folder / "jpeg" / "img_0000.jpg", folder / "photo.dcm")  # content decides
    shutil.rmtree(folder / "jpeg")
    return {name: str(dcmread(io.BytesIO(data)).SOPInstanceUID)
            for name, data in files.items() if name != "ct.dcm"}


def run_job(jobs: JobService, settings: WorkerSettings, folder: Path) -> str:
    outcome = jobs.submit(SubmitRequest(JobInput(paths=[str(folder)])))
    run_worker_burst(settings, FakeBackend())
    job = jobs.get(outcome.job.job_id)
    assert job.state is JobState.SUCCEEDED and (job.total, job.failed) == (5, 1)
    return job.job_id


def test_a_job_of_dicom_files_keeps_their_uids(jobs: JobService, settings: WorkerSettings,
                                               input_root: Path) -> None:
    uids = write_dicom_folder(input_root / "study")
    job_id = run_job(jobs, settings, input_root / "study")
    results = {Path(r.reference).name: r for r in jobs.list_results(job_id, 10, "").results}
    assert results["ct.dcm"].error is not None
    assert results["ct.dcm"].error.reason == "UNSUPPORTED_SOP_CLASS"
    assert results["photo.dcm"].error is None and results["photo.dcm"].dicom is None
    for name, uid in uids.items():
        assert results[name].dicom is not None and results[name].dicom.sop_instance_uid == uid
        assert image_result(result_message(results[name])) == results[name]  # the proto form
    rows = {Path(row["reference"]).name: row
            for row in csv.DictReader(jobs.export_paths(job_id)["csv"].open(newline=""))}
    assert {rows[name]["sop_instance_uid"] for name in uids} == set(uids.values())
    assert rows["photo.dcm"]["study_instance_uid"] == "" and "p_mel" in rows["a.dcm"]


def test_the_ndjson_export_is_fhir_resources_one_per_line(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    uids = write_dicom_folder(input_root / "study")
    job_id = run_job(jobs, settings, input_root / "study")
    ndjson = jobs.export_paths(job_id)["ndjson"]
    lines = ndjson.read_text(encoding="utf-8").splitlines()
    resources = []
    for line in lines:  # every line is one R4B resource that its model validates
        raw = json.loads(line)
        model = get_fhir_model_class(raw["resourceType"])
        resources.append(model.model_validate_json(line))
    kinds = [resource.get_resource_type() for resource in resources]
    assert kinds.count("DiagnosticReport") == 4  # the four images classified, not the CT
    assert kinds.count("Device") == 1  # one model version
    assert kinds.count("ImagingStudy") == 3  # one per DICOM study
    instances = {study.series[0].instance[0].uid for study in resources
                 if study.get_resource_type() == "ImagingStudy"}
    assert instances == set(uids.values())
    ids = {f"{resource.get_resource_type()}/{resource.id}" for resource in resources}
    for resource in resources:  # every reference resolves inside the export
        if resource.get_resource_type() == "DiagnosticReport":
            assert {ref.reference for ref in resource.result} <= ids
        if resource.get_resource_type() == "Observation":
            assert resource.device.reference in ids
    text = ndjson.read_text(encoding="utf-8") + jobs.export_paths(job_id)["jsonl"].read_text()
    for planted in PLANTED:
        assert planted not in text


def test_a_dicom_structure_bomb_in_a_job_is_refused_and_the_job_goes_on(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    """The worker parses DICOM through the same core: a file of ~1.3 million empty items after
    its pixel data (pydicom built them all: +880 MB, 21 s, then classified it) is refused as
    DICOM_TOO_COMPLEX, and the file beside it is classified."""
    folder = input_root / "bomb"
    folder.mkdir(parents=True)
    (folder / "bomb.dcm").write_bytes(with_item_bomb(ham_dicom(), settings.limits.max_bytes))
    (folder / "good.dcm").write_bytes(ham_dicom())
    outcome = jobs.submit(SubmitRequest(JobInput(paths=[str(folder)])))
    run_worker_burst(settings, FakeBackend())
    results = {Path(r.reference).name: r
               for r in jobs.list_results(outcome.job.job_id, 10, "").results}
    assert results["bomb.dcm"].error is not None
    assert results["bomb.dcm"].error.reason == "DICOM_TOO_COMPLEX"
    assert results["good.dcm"].error is None and results["good.dcm"].dicom is not None


def write_one_study(folder: Path) -> tuple[str, dict[str, set[str]]]:
    """Three instances of one study: two in one series, one in another. Returns the study UID
    and the instance UIDs by series."""
    folder.mkdir(parents=True)
    datasets = [dicom_dataset(ham_image(name)) for name in HAM_IMAGE_NAMES]
    study = datasets[0].StudyInstanceUID
    datasets[1].SeriesInstanceUID = datasets[0].SeriesInstanceUID
    series: dict[str, set[str]] = {}
    for number, ds in enumerate(datasets):
        ds.StudyInstanceUID = study
        series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
        (folder / f"{number}.dcm").write_bytes(to_bytes(ds))
    return str(study), series


def test_the_ndjson_export_has_one_imaging_study_per_study_and_stable_ids(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    """Issue 26 defect 9: three instances of one study gave one ImagingStudy listing only the
    first, and the report and observation ids were random on each export (a re-import
    duplicated them). Now one ImagingStudy holds every series and instance, and exporting
    again gives the same ids."""
    study, series = write_one_study(input_root / "one-study")
    outcome = jobs.submit(SubmitRequest(JobInput(paths=[str(input_root / "one-study")])))
    run_worker_burst(settings, FakeBackend())
    job_id = outcome.job.job_id
    lines = jobs.export_paths(job_id)["ndjson"].read_text(encoding="utf-8").splitlines()
    resources = [json.loads(line) for line in lines]
    studies = [raw for raw in resources if raw["resourceType"] == "ImagingStudy"]
    assert len(studies) == 1
    model = get_fhir_model_class("ImagingStudy").model_validate(studies[0])
    assert model.identifier[0].value == f"urn:oid:{study}"
    assert {item.uid: {instance.uid for instance in item.instance}
            for item in model.series} == series
    assert (model.numberOfSeries, model.numberOfInstances) == (2, 3)
    results = jobs.list_results(job_id, 10, "").results
    again = [json.loads(line) for line in FhirNdjsonExporter().lines(
        results, labels_of(results), job_id)]
    assert ids_by_type(again) == ids_by_type(resources)
    assert len(ids_by_type(resources)["DiagnosticReport"]) == 3
    other = [json.loads(line) for line in FhirNdjsonExporter().lines(
        results, labels_of(results), "f" * 32)]  # another job's export of the same images
    assert not ids_by_type(other)["Observation"] & ids_by_type(resources)["Observation"]


def ids_by_type(resources: list[dict[str, object]]) -> dict[str, set[object]]:
    found: dict[str, set[object]] = {}
    for raw in resources:
        found.setdefault(str(raw["resourceType"]), set()).add(raw["id"])
    return found
