"""Benchmark one SavedModel version: the raw floor in process, then Classify over gRPC on loopback,
and the ratios between the two. `python -m devtools.bench --out FILE` (or `make bench`).

1. raw floor: the `serving_default` signature called in this process on preprocessed input:
   median single-image latency, and images/s for a few batch sizes (the best is the floor);
2. decoding: validation + decoding + preprocessing of the benchmark JPEG (the service's own work
   before the model), median;
3. Classify: the real server (embedded backend + micro-batching, batches capped at the best raw
   batch size unless `--server-arg=--batch-max-size=N` says otherwise) in a child process, on
   127.0.0.1, driven by 1, 8 and 32 concurrent clients: p50/p95/p99 latency and calls/s;
4. ratios against the targets: p50 at concurrency 1 <= 1.15 x (raw single + decoding), and
   throughput at concurrency 32 >= 0.85 x the raw best batch throughput.
Each step runs for `--step-seconds` (default 10) after a short warm-up, so a run takes about
three minutes. Shorter steps are noisy: at concurrency 32 a call takes ~0.4 s, and 3 s steps gave
throughputs 15% apart from one run to the next. Server and clients share the machine's cores,
as they would on one pod.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from core.model_config import InputSpec, ModelConfig
from core.preprocessing import to_model_input
from core.validation import ImageLimits, decode_image
from devtools.health import wait_until_serving
from devtools.ports import free_port

CONCURRENCY_LEVELS = (1, 8, 32)  # from the targets
BATCH_SIZES = (1, 4, 8, 16, 32, 64)  # images; 32 is the server's default max batch
DEFAULT_STEP_SECONDS = 10.0  # seconds per measurement: ~25 rounds of 32 calls at c=32
WARM_UP_CALLS = 5  # calls before each measurement, so graph set-up is not measured
SERVER_START_TIMEOUT_S = 120.0  # seconds; TensorFlow's import alone takes 5-10 s here
P50_TARGET = 1.15  # p50 at concurrency 1 over raw single-image latency plus decoding, at most
THROUGHPUT_TARGET = 0.85  # throughput at concurrency 32 over raw best batch throughput, at least


@dataclass(frozen=True)
class Target:
    """The version to benchmark and the image to send."""

    version_dir: Path
    model_base: Path
    model_name: str
    version: int
    image: bytes


def timed_loop(call: Callable[[], object], seconds: float) -> list[float]:
    """Run `call` repeatedly for `seconds` after a warm-up; the latency of each run."""
    for _ in range(WARM_UP_CALLS):
        call()
    latencies = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def summary(latencies: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    return {"calls": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def raw_floor(target: Target, config: ModelConfig, seconds: float) -> dict[str, Any]:
    """The model alone: the signature called in process on preprocessed input."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(target.version_dir)).signatures["serving_default"]
    one = to_model_input(decode_image(target.image, ImageLimits()), config.input)
    single = timed_loop(lambda: serve(image=tf.constant(one[None])), seconds)
    batches = {}
    for size in BATCH_SIZES:
        batch = tf.constant(np.repeat(one[None], size, axis=0))
        runs = timed_loop(partial(serve, image=batch), seconds / 2)
        batches[str(size)] = size / statistics.median(runs)
    best = max(batches, key=lambda size: batches[size])
    return {"single_image": summary(single),
            "batch_images_per_s": batches,
            "best_batch_size": int(best), "best_images_per_s": batches[best]}


def decoding(target: Target, spec: InputSpec, seconds: float) -> dict[str, float]:
    """The service's work before the model: validate, decode, preprocess."""
    limits = ImageLimits()
    return summary(timed_loop(lambda: to_model_input(decode_image(target.image, limits), spec),
                              seconds))


def start_server(target: Target, port: int, extra_args: Sequence[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service", "--listen", f"127.0.0.1:{port}",
               "--metrics-port", "0", "--backend", "embedded",
               "--model-base", str(target.model_base), "--model-name", target.model_name,
               "--log-level", "WARNING", *extra_args]
    return subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def wait_serving(channel: grpc.Channel, server: subprocess.Popen[bytes]) -> None:
    if wait_until_serving(channel, SERVER_START_TIMEOUT_S, lambda: server.poll() is not None):
        return
    if server.poll() is not None:
        raise RuntimeError(f"the server exited with status {server.returncode}")
    raise RuntimeError("the server did not become SERVING in time")


def load_step(channel: grpc.Channel, target: Target, concurrency: int,
              seconds: float) -> dict[str, Any]:
    """`concurrency` clients calling Classify back to back for `seconds`."""
    from dermserve.v1 import lesion_classifier_pb2 as pb
    from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

    stub = pb_grpc.LesionClassifierStub(channel)
    request = pb.ClassifyRequest(image=target.image,
                                 model=pb.ModelSelector(version=target.version))

    def client(until: float) -> list[float]:
        latencies = []
        while time.perf_counter() < until:
            started = time.perf_counter()
            stub.Classify(request, timeout=60)
            latencies.append(time.perf_counter() - started)
        return latencies

    with ThreadPoolExecutor(concurrency) as pool:  # warm-up, at this concurrency
        list(pool.map(lambda _: client(time.perf_counter() + 0.5), range(concurrency)))
        started = time.perf_counter()
        until = started + seconds
        runs = list(pool.map(lambda _: client(until), range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies = [latency for run in runs for latency in run]
    return {**summary(latencies), "concurrency": concurrency,
            "calls_per_s": len(latencies) / elapsed}


def over_grpc(target: Target, seconds: float, server_args: Sequence[str]) -> dict[str, Any]:
    port = free_port()
    server = start_server(target, port, server_args)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, server)
            return {str(c): load_step(channel, target, c, seconds) for c in CONCURRENCY_LEVELS}
    finally:
        server.terminate()
        server.wait(30)


def ratios(raw: dict[str, Any], decode: dict[str, float],
           grpc_results: dict[str, Any]) -> dict[str, Any]:
    floor_single = raw["single_image"]["p50_ms"] + decode["p50_ms"]
    p50_ratio = grpc_results["1"]["p50_ms"] / floor_single
    throughput_ratio = grpc_results["32"]["calls_per_s"] / raw["best_images_per_s"]
    return {"p50_c1_over_raw_single_plus_decode": p50_ratio,
            "p50_target_max": P50_TARGET, "p50_target_met": p50_ratio <= P50_TARGET,
            "throughput_c32_over_raw_best_batch": throughput_ratio,
            "throughput_target_min": THROUGHPUT_TARGET,
            "throughput_target_met": throughput_ratio >= THROUGHPUT_TARGET}


def bench_image(path: Path | None) -> bytes:
    """The image to send: a file, or a photo-like 600x450 JPEG (HAM10000's original size):
    smooth colour blobs with mild sensor noise, so it compresses like a photo (~40 KB)."""
    if path is not None:
        return path.read_bytes()
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:450, 0:600].astype(np.float32)
    pixels = np.full((450, 600, 3), (200.0, 150.0, 130.0), np.float32)
    for _ in range(6):
        cy, cx, radius = rng.uniform(0, 450), rng.uniform(0, 600), rng.uniform(40, 160)
        blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius ** 2))
        pixels -= blob[..., None] * rng.uniform(20, 90, 3)
    pixels += rng.normal(0, 3, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def find_target(model_base: Path, model_name: str, version: int | None,
                image: Path | None) -> Target:
    model_dir = model_base / model_name
    numbers = sorted(int(p.name) for p in model_dir.iterdir()
                     if p.name.isdigit() and (p / "saved_model.pb").exists())
    if not numbers:
        raise SystemExit(f"no versions under {model_dir}")
    chosen = version if version is not None else numbers[-1]
    return Target(model_dir / str(chosen), model_base, model_name, chosen, bench_image(image))


def server_flags(extra: Sequence[str], best_batch_size: int) -> list[str]:
    """The server's flags: micro-batches capped at the model's best measured batch size (what an
    operator would set), unless the caller chose a size."""
    flags = list(extra)
    if not any(flag.startswith("--batch-max-size") for flag in flags):
        flags.append(f"--batch-max-size={best_batch_size}")
    return flags


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    target = find_target(args.model_base, args.model_name, args.version, args.image)
    config = ModelConfig.read(target.version_dir)
    raw = raw_floor(target, config, args.step_seconds)
    decode = decoding(target, config.input, args.step_seconds)
    server_args = server_flags(args.server_arg, raw["best_batch_size"])
    served = over_grpc(target, args.step_seconds, server_args)
    return {"model": {"base": str(target.model_base), "name": target.model_name,
                      "version": target.version, "description": config.description,
                      "input": [config.input.height, config.input.width]},
            "image_bytes": len(target.image),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        # Other work on the machine skews every figure; judge them with this.
                        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]]},
            "step_seconds": args.step_seconds, "server_args": server_args,
            "raw": raw, "decode": decode, "grpc": served,
            "ratios": ratios(raw, decode, served)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--version", type=int, help="default: the highest version")
    parser.add_argument("--image", type=Path, help="image to send (default: a 600x450 JPEG)")
    parser.add_argument("--step-seconds", type=float, default=DEFAULT_STEP_SECONDS)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the server, e.g. --server-arg=--batch-max-wait-ms=1")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["ratios"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
