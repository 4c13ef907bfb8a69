"""Patient context in batch manifests (real redis-server, in-process worker, real classifier
core over the real embedded backend): each row's age, sex and site reach a version that takes
context, a row with a bad value fails alone with INVALID_CONTEXT, and nothing is lost."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.batch.results import ImageResult, csv_lines, labels_of
from dermserve.core.backends.base import Backend
from dermserve.worker.runner import WorkerProcess, build_classifier
from dermserve.worker.settings import WorkerSettings
from tests.context_models import received
from tests.worker.conftest import write_images

MANIFEST = """path,lesion_id,age,sex,site
{0},L1,45,male,trunk
{1},L2,,,
{2},L3,200,female,back
{3},L4,30,female,left elbow
{4},L5,8,FEMALE,Upper_Extremity
folder,L6,70,male,face
"""
"""Six rows: full context, none, a bad age, a bad site, words in other cases, and a folder of
two images, which both get its row's context."""


def run_manifest(jobs: JobService, settings: WorkerSettings, backend: Backend,
                 input_root: Path, version: int,
                 inline: bool = False) -> tuple[JobState, list[ImageResult]]:
    names = [path.name for path in write_images(input_root, 5, distinct=1)]  # one image
    write_images(input_root / "folder", 2, distinct=1)
    text = MANIFEST.format(*names)
    (input_root / "list.csv").write_text(text)
    job_input = (JobInput(manifest_csv=text) if inline else
                 JobInput(manifest_path=str(input_root / "list.csv")))
    outcome = jobs.submit(SubmitRequest(job_input, model_version=version))
    WorkerProcess(settings, build_classifier(settings, backend)).serve()
    job = jobs.get(outcome.job.job_id)
    return job.state, jobs.list_results(job.job_id, page_size=10).results


def read_back(result: ImageResult) -> tuple[float, int, int]:
    return received({label: probability for label, _, probability in result.probabilities})


@pytest.mark.parametrize("inline", [False, True], ids=["manifest file", "inline manifest"])
def test_each_manifest_rows_context_reaches_the_model(
        jobs: JobService, settings: WorkerSettings, context_backend: Backend,
        input_root: Path, inline: bool) -> None:
    state, results = run_manifest(jobs, settings, context_backend, input_root, 3, inline)
    assert state is JobState.SUCCEEDED and len(results) == 7
    assert read_back(results[0]) == (45.0, 2, 19) and results[0].context_used
    assert read_back(results[1]) == (-1.0, 0, 0) and not results[1].context_used
    for bad in results[2:4]:
        assert bad.error is not None and bad.error.reason == "INVALID_CONTEXT"
        assert bad.error.code == "INVALID_ARGUMENT"
        assert "200" not in bad.error.message and "elbow" not in bad.error.message
    assert read_back(results[4]) == (8.0, 1, 20)
    assert [read_back(result) for result in results[5:]] == [(70.0, 2, 7)] * 2
    rows = list(csv.DictReader(io.StringIO("".join(csv_lines(results, labels_of(results))))))
    assert [row["context_used"] for row in rows] == ["1", "0", "0", "0", "1", "1", "1"]


def test_a_version_without_context_inputs_ignores_the_columns(
        jobs: JobService, settings: WorkerSettings, context_backend: Backend,
        input_root: Path) -> None:
    """The same image on every row: rows with and without context answer alike."""
    state, results = run_manifest(jobs, settings, context_backend, input_root, 2)
    assert state is JobState.SUCCEEDED
    assert not any(result.context_used for result in results)
    answered = [results[index].probabilities for index in (0, 1, 4)]
    assert answered[0] == answered[1] == answered[2]
    assert {result.error.reason for result in results if result.error} == {"INVALID_CONTEXT"}
