"""Explain against Classify on the same image and version, over gRPC, in one run.

`python -m devtools.bench.explain_bench --out FILE` (a line of `make bench`): starts the real server
(embedded backend) on 127.0.0.1 in a child process, then one client calls Classify and Explain
alternately on the same image, pinned to the same version, `--calls` times each after a warm-up.
Alternating pairs means a change in the machine's load during the run weighs on both alike; the
result is the ratio of Explain's latency to Classify's (p50, and the median of the per-pair
ratios), with both latency summaries, written as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from dermserve.core.backends.version_dirs import scan_versions
from devtools.bench.harness import add_target_arguments, write_report
from devtools.stack.health import wait_until_ready
from devtools.stack.ports import free_port
from devtools.stack.process import front_command, start

DEFAULT_CALLS = 40  # pairs measured; an Explain of the released model takes ~0.1-0.5 s here
WARM_UP_PAIRS = 5  # pairs before measuring, so neither signature's graph set-up is measured
SERVER_START_TIMEOUT_S = 180.0  # seconds: TensorFlow's import, loading and warming every version
CALL_TIMEOUT_S = 60.0  # seconds per call: generous on a loaded machine, never a hang


def start_server(model_base: Path, model_name: str, port: int) -> subprocess.Popen[bytes]:
    return start(front_command(f"127.0.0.1:{port}", model_base, model_name,
                               "--log-level", "WARNING"))


def latest_version(model_base: Path, model_name: str) -> int:
    model_dir = model_base / model_name
    numbers = scan_versions(model_dir)
    if not numbers:
        raise SystemExit(f"no versions under {model_dir}")
    return max(numbers)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summary(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"calls": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "mean_ms": 1000 * statistics.fmean(ordered)}


def measure(channel: grpc.Channel, image: bytes, version: int, calls: int) -> dict[str, Any]:
    """Alternate Classify and Explain `calls` times each; their latencies and ratios."""
    from dermserve.v1 import lesion_classifier_pb2 as pb
    from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

    stub = pb_grpc.LesionClassifierStub(channel)
    selector = pb.ModelSelector(version=version)
    classify_request = pb.ClassifyRequest(image=image, model=selector)
    explain_request = pb.ExplainRequest(image=image, model=selector)

    def pair() -> tuple[float, float]:
        return (timed(lambda: stub.Classify(classify_request, timeout=CALL_TIMEOUT_S)),
                timed(lambda: stub.Explain(explain_request, timeout=CALL_TIMEOUT_S)))

    for _ in range(WARM_UP_PAIRS):
        pair()
    pairs = [pair() for _ in range(calls)]
    classify = summary([c for c, _ in pairs])
    explain = summary([e for _, e in pairs])
    return {"classify": classify, "explain": explain,
            "explain_over_classify_p50": explain["p50_ms"] / classify["p50_ms"],
            "explain_over_classify_median_of_pairs": statistics.median(e / c for c, e in pairs)}


def synthetic_jpeg() -> bytes:
    """A smooth 600x450 (HAM10000's size) JPEG with a dark blob, for machines without the data."""
    ys, xs = np.mgrid[0:450, 0:600].astype(np.float32)
    blob = np.exp(-((ys - 225) ** 2 + (xs - 300) ** 2) / (2 * 90.0 ** 2))[..., None]
    pixels = np.array([205.0, 150.0, 130.0]) - blob * np.array([110.0, 90.0, 70.0])
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> dict[str, Any]:
    version = args.version or latest_version(args.model_base, args.model_name)
    image = args.image.read_bytes() if args.image is not None else synthetic_jpeg()
    load_before = os.getloadavg()
    port = free_port()
    server = start_server(args.model_base, args.model_name, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if not wait_until_ready(channel, args.model_base, args.model_name,
                                    SERVER_START_TIMEOUT_S, lambda: server.poll() is not None):
                raise SystemExit("the server did not become SERVING with its versions loaded")
            measured = measure(channel, image, version, args.calls)
    finally:
        server.terminate()
        server.wait(30)
    return {"model": {"base": str(args.model_base), "name": args.model_name,
                      "version": version},
            "image": str(args.image or "synthetic 600x450 JPEG"), "image_bytes": len(image),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]]},
            **measured}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.explain_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser,
                         image_help="the image both calls send (default: a synthetic 600x450 JPEG)")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS,
                        help="Classify/Explain pairs measured")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    write_report(args.out, result)
    print(json.dumps({key: result[key] for key in
                      ("explain_over_classify_p50", "explain_over_classify_median_of_pairs")}))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
