"""The worker decodes within the same kind of budget as the front: a job of 40-megapixel CMYK and
EXIF-rotated JPEGs (which took a worker from 0.96 to 3.56 GB) runs on a real redis-server and an
in-process worker, decoding each image at reduced scale and counting its copy."""

from __future__ import annotations

import math
from pathlib import Path

from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.worker.runner import WorkerProcess, build_classifier
from dermserve.worker.settings import WorkerSettings
from tests.hostile_images import LARGE_SIZE, large_cmyk_jpeg, large_rotated_jpeg, peak_memory
from tests.worker.conftest import FakeBackend

MB = 1024 * 1024
JOB_IMAGES = 16


def test_a_job_of_large_jpegs_decodes_within_the_worker_budget(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    directory = input_root / "large"
    directory.mkdir()
    samples = [large_cmyk_jpeg(), large_rotated_jpeg()]
    for index in range(JOB_IMAGES):
        (directory / f"img_{index:04d}.jpg").write_bytes(samples[index % 2])
    outcome = jobs.submit(SubmitRequest(JobInput(paths=[str(directory)])))
    classifier = build_classifier(settings, FakeBackend())
    with peak_memory() as memory:
        WorkerProcess(settings, classifier).serve()
    job = jobs.get(outcome.job.job_id)
    assert job.state is JobState.SUCCEEDED and (job.done, job.failed) == (JOB_IMAGES, 0)
    budget = classifier.decode_budget
    assert budget is not None and budget.in_use == 0
    eighth = math.ceil(LARGE_SIZE[0] / 8) * math.ceil(LARGE_SIZE[1] / 8)
    # One image decodes at a time per batch in flight, at 1/8 scale, with its copy counted.
    assert 2 * eighth <= budget.peak <= settings.pipeline_depth * 2 * eighth
    assert memory.growth_bytes < 256 * MB, f"peak grew by {memory.growth_bytes / MB:.0f} MB"
