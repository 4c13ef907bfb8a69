"""The worker exports the same model-path metrics as the front (decode latency, rejections,
predictions, model events): a real worker process's registry after a job on a real redis-server
and a tiny real SavedModel, built the way `dermserve-worker` builds it."""

from __future__ import annotations

from pathlib import Path

from dermserve.batch.jobs import InlineImage, JobInput, JobService, SubmitRequest
from dermserve.batch.records import JobState
from dermserve.worker.runner import start_worker
from dermserve.worker.settings import WorkerSettings
from tests.conftest import TINY_MODEL_NAME
from tests.worker.conftest import jpeg_bytes


def test_a_batch_job_is_counted_in_the_front_s_metric_names(settings: WorkerSettings,
                                                            model_base: Path,
                                                            jobs: JobService) -> None:
    worker_settings = settings.with_overrides(model_base=model_base, model_name=TINY_MODEL_NAME)
    images = [InlineImage("a.jpg", jpeg_bytes(1)), InlineImage("b.jpg", jpeg_bytes(2)),
              InlineImage("bad.jpg", b"not an image")]
    job_id = jobs.submit(SubmitRequest(JobInput(inline=images))).job.job_id
    process, backend = start_worker(worker_settings)
    try:
        process.serve()  # burst: returns once the queues are empty
    finally:
        backend.close()
    assert jobs.get(job_id).state is JobState.SUCCEEDED
    sample = process.registry.get_sample_value
    assert sample("dermserve_decode_latency_seconds_count") == 2
    assert sample("dermserve_image_rejections_total", {"reason": "UNSUPPORTED_FORMAT"}) == 1
    predicted = sum(sample("dermserve_predictions_total", {"label": label, "model_version": "2"})
                    or 0 for label in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"))
    assert predicted == 2
    assert sample("dermserve_model_latency_seconds_count") >= 1
    assert sample("dermserve_model_load_events_total", {"event": "loaded"}) >= 1
    assert sample("dermserve_batch_images_total", {"outcome": "classified"}) == 2
