"""A short soak (devtools/soak/run.py) on a tiny model and a small batch job: every fault happens
and heals, the job lists and exports every image exactly once, no unary Classify fails outside the
front's own restart window, and the report and its plot are written. It asserts what happened,
never how long anything took (the faults are due at fractions of the run, and each waits for the
stack to heal from the one before)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.soak.run import SCHEDULE, parse_args, soak, write_outputs
from tests.worker.conftest import write_images

IMAGES = 40
TIMEOUT_S = 900  # seconds: three TensorFlow starts and a front restart; 3 min on busy cores


@pytest.mark.timeout(TIMEOUT_S)
def test_a_short_soak_keeps_its_invariants(tmp_path: Path, model_base: Path) -> None:
    write_images(tmp_path / "input" / "images", IMAGES)
    args = parse_args(["--duration-s", "20", "--model-base", str(model_base),
                       "--images-dir", str(tmp_path / "input" / "images"),
                       "--job-images", str(IMAGES), "--concurrency", "4",
                       "--job-timeout-s", "300", "--out-dir", str(tmp_path / "out")])
    report = soak(args, tmp_path / "work")
    path = write_outputs(report, args.out_dir)

    assert [event["name"] for event in report["chaos"]] == [name for name, _ in SCHEDULE]
    assert all(event["recovered_s"] is not None for event in report["chaos"])
    assert report["targets"]["every_fault_recovered"]
    job = report["batch_job"]
    assert job["state"] == "BATCH_JOB_STATE_SUCCEEDED" and job["done"] == IMAGES
    assert job["every_image_exactly_once"]
    assert job["listed"] == job["exported_jsonl"] == {"duplicated": 0, "missing": 0,
                                                      "unexpected": 0}
    assert report["unary"]["failed_outside_front_restart"] == 0
    calls, outside = report["calls"]["all"], report["calls"]["outside_front_restart"]
    assert calls["Classify"]["OK"] > 0
    assert set(outside["Classify"]) == {"OK"}
    assert calls["ClassifyStream"].get("OK", 0) > 0
    assert calls["ListModels"].get("OK", 0) > 0
    publish = next(event for event in report["chaos"] if event["name"] == "publish_version")
    published = str(publish["detail"]["version"])
    assert published in report["unary"]["answered_by_version"]  # the new version served
    assert {"front", "worker", "redis", "launcher", "soak"} <= report["rss_mb"].keys()
    assert json.loads(path.read_text())["targets"] == report["targets"]
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
