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

from service.batch_jobs import image_result, result_message
from tests.dicom_files import (
    HAM_IMAGE_NAMES,
    PLANTED,
    bundled,
    dermoscopic_dicom,
    ham_dicom,
    with_item_bomb,
)
from tests.worker.conftest import FakeBackend, run_worker_burst, write_images
from worker.jobs import JobInput, JobService, SubmitRequest
from worker.records import JobState
from worker.settings import WorkerSettings


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
