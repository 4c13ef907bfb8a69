"""What each model version costs a user, measured side by side in one run: single-image Classify
latency over gRPC at concurrency 1 and the throughput of a batch job with one worker.

A bigger model (version 4 adds an Xception to version 3's three MobileNetV2 networks) must still
answer a clinician's single image and a night's batch job in time on the deployment's 2 CPUs:
issue 29's budget is a Classify p50 of at most 200 ms and a batch job of at least 10 images/s.
Each version is served alone from a model base of its own (a symlink), so neither the front nor
the worker loads the other, and the versions are measured one after the other in the same run.

    python -m devtools.bench.version_cost --model-base models --versions 3 4 \\
        --image ../shared/data/ham10000/images/ISIC_0024306.jpg \\
        --data-dir ../shared/data/ham10000/images --out bench-results/version-cost-X.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dermserve.core.backends.version_dirs import scan_versions
from devtools.bench import batch_bench
from devtools.bench.harness import Target, bench_image, running_front, summary

DEFAULT_SECONDS = 20.0  # of Classify calls at concurrency 1 per version, after the warm-up
DEFAULT_JOB_IMAGES = 300  # per version's batch job: enough chunks to reach a steady rate
LATENCY_BUDGET_MS = 200.0  # issue 29: single-image Classify p50 on 2 CPUs
THROUGHPUT_BUDGET = 10.0  # issue 29: batch job images/s on 2 CPUs


def alone(model_base: Path, model_name: str, version: int, root: Path) -> Path:
    """A model base holding only `version` (a symlink to it)."""
    model_dir = root / f"v{version}" / model_name
    model_dir.mkdir(parents=True)
    (model_dir / str(version)).symlink_to((model_base / model_name / str(version)).resolve())
    return model_dir.parent


def classify_latency(base: Path, model_name: str, version: int, image: bytes,
                     seconds: float) -> dict[str, Any]:
    target = Target(base / model_name / str(version), base, model_name, version, image)
    with running_front(target, []) as front:
        window = front.window(target, image, 1, seconds)
    return summary(window.latencies)


def job_throughput(base: Path, model_name: str, images: int,
                   data_dir: Path | None) -> dict[str, Any]:
    args = batch_bench.parse_args(["--images", str(images), "--model-base", str(base),
                                   "--model-name", model_name,
                                   *(["--data-dir", str(data_dir)] if data_dir else [])])
    report = batch_bench.run(args)
    return {"images": images, "images_per_s": report["job_images_per_s"],
            "raw_images_per_s": report["raw_images_per_s"],
            "cpu_ms_per_image": report["job"]["cpu_ms_per_image"],
            "model_version": report["job"]["model_version"]}


def measure_version(model_base: Path, model_name: str, version: int, args: argparse.Namespace,
                    root: Path) -> dict[str, Any]:
    base = alone(model_base, model_name, version, root)
    latency = classify_latency(base, model_name, version, bench_image(args.image), args.seconds)
    job = job_throughput(base, model_name, args.job_images, args.data_dir)
    return {"version": version, "classify_c1": latency, "batch_job": job,
            "meets_latency_budget": latency["p50_ms"] <= LATENCY_BUDGET_MS,
            "meets_throughput_budget": job["images_per_s"] >= THROUGHPUT_BUDGET}


def run(args: argparse.Namespace) -> dict[str, Any]:
    numbers = sorted(scan_versions(args.model_base / args.model_name) or {})
    versions = args.versions or numbers[-2:]
    missing = sorted(set(versions) - set(numbers))
    if missing:
        raise SystemExit(f"no version(s) {missing} under {args.model_base / args.model_name}")
    root = Path(tempfile.mkdtemp(prefix="dermserve-version-cost-"))
    try:
        results = [measure_version(args.model_base, args.model_name, version, args, root)
                   for version in versions]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"benchmark": "version_cost", "model_base": str(args.model_base),
            "latency_budget_ms": LATENCY_BUDGET_MS, "throughput_budget": THROUGHPUT_BUDGET,
            "seconds": args.seconds, "versions": results}


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = ["| version | Classify p50 / p99 ms at 1 | batch job images/s | CPU ms per job "
             "image |", "|---|---:|---:|---:|"]
    for entry in result["versions"]:
        latency, job = entry["classify_c1"], entry["batch_job"]
        lines.append(f"| {entry['version']} | {latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} "
                     f"| {job['images_per_s']:.1f} | {job['cpu_ms_per_image']:.1f} |")
    lines.append(f"(budgets: p50 <= {LATENCY_BUDGET_MS:g} ms, >= {THROUGHPUT_BUDGET:g} images/s)")
    return lines


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.version_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--versions", type=int, nargs="*", default=[],
                        help="versions to compare (default: the two latest)")
    parser.add_argument("--image", type=Path, help="the Classify image (default: synthetic)")
    parser.add_argument("--data-dir", type=Path, help="the batch job's images (optional)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--job-images", type=int, default=DEFAULT_JOB_IMAGES)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n".join(report_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
