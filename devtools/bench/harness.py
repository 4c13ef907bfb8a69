"""The benchmarks' harness: what `make bench`'s run (devtools/bench/run.py) and the other
benchmarks (explain_bench, version_cost, warm_up_bench, the peers) measure with. The raw model in
process run as the server runs it (`RawModel`, `served_settings`), the decoding matrix of real
image sizes, a fresh front on free loopback ports (`running_front`) and a reference server
(`running_reference`), concurrent clients timed in windows with the server's CPU spent in them
(`measure`, `ServerProbe`), summaries, and the report file."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from dermserve.core.backends.savedmodel import FrozenSignature, serving_function
from dermserve.core.backends.version_dirs import scan_versions
from dermserve.core.image.decoding import decode_for_model, decode_image
from dermserve.core.image.limits import ImageLimits
from dermserve.core.model_config import InputSpec, ModelConfig
from dermserve.core.preprocessing import to_model_input
from dermserve.service.settings import Settings
from devtools import proc
from devtools.stack.health import wait_until_ready
from devtools.stack.ports import free_port
from devtools.stack.process import front_command, start

CONCURRENCY_LEVELS = (1, 8, 32)  # from the targets
BATCH_SIZES = (1, 4, 8, 16, 32, 64)  # images; 32 is the server's default max batch
DEFAULT_STEP_SECONDS = 10.0  # seconds per measurement: ~25 rounds of 32 calls at c=32
WARM_UP_CALLS = 5  # calls before each measurement, so graph set-up is not measured
SERVER_START_TIMEOUT_S = 120.0  # seconds; TensorFlow's import alone takes 5-10 s here
CALL_TIMEOUT_S = 120.0  # seconds per call; a phone photo at c=8 on a loaded machine takes ~2 s
P50_TARGET = 1.10  # p50 at concurrency 1 over raw single-image latency plus decoding, at most
MATRIX_SIZES = {"jpeg_200x150": (200, 150), "jpeg_600x450": (600, 450),
                "jpeg_1024x768": (1024, 768), "jpeg_4032x3024": (4032, 3024)}
"""Pixels: HAM10000's published size, a dermatoscope frame (600x450, 100-300 KB in clinics),
a larger frame, and a 12-megapixel phone photo of a dermatoscope (3-6 MB)."""
MATRIX_PNG = ("png_600x450", (600, 450))  # a frame exported losslessly
PHONE_PHOTO = "jpeg_4032x3024"  # the input the peer also gets, where decoding dominates
SENSOR_NOISE = 6.0  # grey levels (sigma): grain that makes upscaled frames compress like photos
JPEG_QUALITY = 95  # cameras and dermatoscopes write 90-95; 95 gives 100 KB frames, 4 MB photos


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


class RawModel:
    """The model alone: the `serving_default` signature called in this process on the benchmark
    image, decoded and preprocessed once; with `frozen`, its graph as the embedded backend runs
    it (variables folded into constants: dermserve/core/backends/savedmodel.py `freeze_serving`)."""

    def __init__(self, target: Target, config: ModelConfig, frozen: bool = True) -> None:
        import tensorflow as tf

        self._tf = tf
        self._saved_model = tf.saved_model.load(str(target.version_dir))
        self._serve = serving_function(self._saved_model, config, frozen)
        self.frozen = isinstance(self._serve, FrozenSignature)
        self._one = decode_for_model(target.image, ImageLimits(), config.input)

    def single(self, seconds: float) -> list[float]:
        """Latencies of one-image calls for `seconds`."""
        one = self._tf.constant(self._one[None])
        return timed_loop(lambda: self._serve(image=one), seconds)

    def batch(self, size: int, seconds: float, callers: int = 1) -> tuple[float, float]:
        """(images/s, CPU ms per image) of back-to-back calls of `size` images from `callers`
        threads at once (the front's micro-batcher runs `--batch-workers` batches at once)."""
        batch = self._tf.constant(np.repeat(self._one[None], size, axis=0))
        cpu_before = time.process_time()
        with ThreadPoolExecutor(callers) as pool:
            runs = list(pool.map(lambda _: timed_loop(partial(self._serve, image=batch), seconds),
                                 range(callers)))
        calls = sum(len(run) + WARM_UP_CALLS for run in runs)
        return (sum(size / statistics.median(run) for run in runs),
                cpu_ms_per(time.process_time() - cpu_before, size * calls))


def as_loaded(target: Target, config: ModelConfig, best: tuple[int, int],
              seconds: float) -> dict[str, Any]:
    """The signature as TensorFlow's loader gives it, variables and all (what the front ran
    before it froze versions): single-image latency and the sweep's best setup, for the gain."""
    loaded = RawModel(target, config, frozen=False)
    single = summary(loaded.single(seconds))
    images_per_s, cpu_ms = loaded.batch(best[0], seconds / 2, best[1])
    return {"single_image": single, "best_setup_images_per_s": images_per_s,
            "best_setup_cpu_ms_per_image": cpu_ms}


def raw_floor(raw: RawModel, seconds: float, dispatchers: int = 1) -> dict[str, Any]:
    """The sweep: single-image latency, each batch size's images/s from one caller, and the
    best size again from as many callers as the front has `dispatchers` (named "SIZExN"). It
    picks the best setup; the paired rounds (below) measure it again beside the served steps."""
    single = raw.single(seconds)
    setups = {str(size): (size, 1) for size in BATCH_SIZES}
    figures = {name: raw.batch(size, seconds / 2) for name, (size, _) in setups.items()}
    best_size = int(max(figures, key=lambda name: figures[name][0]))
    if dispatchers > 1:
        name = f"{best_size}x{dispatchers}"
        setups[name] = (best_size, dispatchers)
        figures[name] = raw.batch(best_size, seconds / 2, dispatchers)
    best = max(figures, key=lambda name: figures[name][0])
    return {"single_image": summary(single),
            "batch_images_per_s": {name: figure[0] for name, figure in figures.items()},
            "batch_cpu_ms_per_image": {name: figure[1] for name, figure in figures.items()},
            "best_setup": best, "best_batch_size": setups[best][0],
            "best_callers": setups[best][1], "best_images_per_s": figures[best][0]}


def cpu_ms_per(cpu_seconds: float, count: int) -> float:
    return cpu_seconds * 1000.0 / max(count, 1)


def matrix_images(source: bytes) -> dict[str, bytes]:
    """The inputs hospitals send, made deterministically from `source` (a HAM10000 image):
    upscaled to each size with sensor grain so they compress like photos; the PNG is the
    600x450 frame's pixels."""
    image = Image.open(io.BytesIO(source)).convert("RGB")
    rng = np.random.default_rng(0)
    images, pixels_by_size = {}, {}
    for name, size in MATRIX_SIZES.items():
        scaled = np.asarray(image.resize(size, Image.Resampling.BICUBIC), np.float32)
        grain = rng.standard_normal(scaled.shape, dtype=np.float32) * SENSOR_NOISE
        pixels_by_size[size] = np.clip(scaled + grain, 0, 255).astype(np.uint8)
        images[name] = encoded(pixels_by_size[size], "JPEG", quality=JPEG_QUALITY)
    name, size = MATRIX_PNG
    images[name] = encoded(pixels_by_size[size], "PNG")
    return images


def encoded(pixels: np.ndarray, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format, **options)
    return buffer.getvalue()


def decode_full(data: bytes, spec: InputSpec) -> np.ndarray:
    """Before issue 11: every image decoded at full size, then preprocessed."""
    return to_model_input(decode_image(data, ImageLimits()), spec)


def decoding(image: bytes, spec: InputSpec, seconds: float) -> dict[str, Any]:
    """The service's work before the model on one input: full-scale decode vs reduced-scale."""
    limits = ImageLimits()
    full = summary(timed_loop(partial(decode_full, image, spec), seconds))
    draft = summary(timed_loop(partial(decode_for_model, image, limits, spec), seconds))
    width, height = Image.open(io.BytesIO(image)).size
    return {"bytes": len(image), "size": [width, height], "full_decode": full,
            "draft_decode": draft, "draft_speedup": full["p50_ms"] / draft["p50_ms"]}


def decoding_matrix(images: dict[str, bytes], spec: InputSpec,
                    seconds: float) -> dict[str, Any]:
    return {name: decoding(data, spec, seconds) for name, data in images.items()}


@dataclass(frozen=True)
class Window:
    """One measured stretch of calls at one concurrency."""

    concurrency: int
    latencies: list[float]
    elapsed_s: float
    client_cpu_s: float
    server_spent: dict[str, float]  # the server's counters' growth over the window


def measure(new_client: Callable[[], Callable[[], object]], concurrency: int, seconds: float,
            server: ServerProbe | None = None) -> Window:
    """`concurrency` clients calling back to back for `seconds` after a warm-up at the same
    concurrency; each client thread makes its own caller with `new_client()`. With `server`,
    what the server spent in the measured window (not the warm-up) too."""
    def client(until: float) -> list[float]:
        call = new_client()
        latencies = []
        while time.perf_counter() < until:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        return latencies

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: client(time.perf_counter() + 0.5), range(concurrency)))
        server_before = server.counters() if server is not None else {}
        started, cpu_before = time.perf_counter(), time.process_time()
        until = started + seconds
        runs = list(pool.map(lambda _: client(until), range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        server_after = server.counters() if server is not None else {}
    spent = {key: server_after[key] - server_before[key]
             for key in server_before.keys() & server_after.keys()}
    return Window(concurrency, [latency for run in runs for latency in run], elapsed, cpu, spent)


def pooled(windows: Sequence[Window]) -> dict[str, Any]:
    """The figures of one or more windows at the same concurrency, taken together."""
    latencies = [latency for window in windows for latency in window.latencies]
    spent: dict[str, float] = {}
    for window in windows:
        for key, value in window.server_spent.items():
            spent[key] = spent.get(key, 0.0) + value
    elapsed = sum(window.elapsed_s for window in windows)
    return {**summary(latencies), "concurrency": windows[0].concurrency,
            "calls_per_s": len(latencies) / elapsed,
            "client_cpu_ms_per_call": cpu_ms_per(sum(w.client_cpu_s for w in windows),
                                                 len(latencies)),
            **server_costs(spent, len(latencies))}


def drive(new_client: Callable[[], Callable[[], object]], concurrency: int, seconds: float,
          server: ServerProbe | None = None) -> dict[str, Any]:
    """One window's figures (see `measure`)."""
    return pooled([measure(new_client, concurrency, seconds, server)])


THREAD_CPU_PREFIX = "cpu_s:"  # counters of one thread name's CPU seconds: "cpu_s:tf_Compute"


SERVER_TOTALS = {
    "batch_images": "dermserve_batch_size_sum",
    "batch_calls": "dermserve_batch_size_count",
    "request_s": 'dermserve_request_latency_seconds_sum{method="Classify"}',
    "requests": 'dermserve_request_latency_seconds_count{method="Classify"}',
    "decode_s": "dermserve_decode_latency_seconds_sum",
    "model_s": "dermserve_model_latency_seconds_sum",
    "model_calls": "dermserve_model_latency_seconds_count",
}
"""The server's own running totals the benchmark reads from /metrics, by the name it uses: the
micro-batches, and where a Classify's time goes inside the server (decoding; the model call, its
micro-batch queueing included; the whole handler)."""


def server_totals(metrics_port: int | None) -> dict[str, float]:
    """The SERVER_TOTALS the server's /metrics has now (none without a metrics port)."""
    if metrics_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        return totals_in(page.read().decode())


def totals_in(exposition: str) -> dict[str, float]:
    """The SERVER_TOTALS in a Prometheus text exposition."""
    samples = dict(line.rsplit(" ", 1) for line in exposition.splitlines()
                   if line and not line.startswith("#"))
    return {key: float(samples[name]) for key, name in SERVER_TOTALS.items() if name in samples}


@dataclass(frozen=True)
class ServerProbe:
    """Counters of a server process: its CPU (/proc) and, with a metrics port, its totals."""

    pid: int
    metrics_port: int | None = None

    def counters(self) -> dict[str, float]:
        found = server_totals(self.metrics_port)
        cpu = proc.cpu_s(self.pid)
        if cpu is not None:
            found["cpu_s"] = cpu
        for name, seconds in proc.thread_cpu_s(self.pid).items():
            found[THREAD_CPU_PREFIX + name] = seconds
        return found


def server_costs(spent: dict[str, float], calls: int) -> dict[str, Any]:
    """What the server spent per call, from its counters' growth: CPU (unlike calls/s it barely
    moves when other work shares the machine), the mean micro-batch, and the mean milliseconds of
    a Classify inside the server: the whole handler, decoding, and the model call (queueing for
    its micro-batch included). The client's mean_ms less the handler's is the transport.
    The CPU per call is split by thread name too: TensorFlow's pool against the Python threads."""
    costs: dict[str, Any] = {}
    if "cpu_s" in spent:
        costs["server_cpu_ms_per_call"] = cpu_ms_per(spent["cpu_s"], calls)
    by_thread = {key.removeprefix(THREAD_CPU_PREFIX): cpu_ms_per(seconds, calls)
                 for key, seconds in spent.items()
                 if key.startswith(THREAD_CPU_PREFIX) and seconds > 0}
    if by_thread:
        costs["server_cpu_ms_per_call_by_thread"] = dict(sorted(by_thread.items()))
    if "batch_calls" in spent:
        costs["mean_batch_images"] = spent["batch_images"] / max(spent["batch_calls"], 1.0)
    if spent.get("requests"):
        costs["server_handler_ms_mean"] = spent["request_s"] * 1000 / spent["requests"]
    if spent.get("model_calls"):
        costs["server_decode_ms_mean"] = spent["decode_s"] * 1000 / spent["model_calls"]
        costs["server_model_ms_mean"] = spent["model_s"] * 1000 / spent["model_calls"]
    return costs


def grpc_client(channel: grpc.Channel, image: bytes, version: int) -> Callable[[], object]:
    from dermserve.v1 import lesion_classifier_pb2 as pb
    from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

    stub = pb_grpc.LesionClassifierStub(channel)
    request = pb.ClassifyRequest(image=image, model=pb.ModelSelector(version=version))
    return partial(stub.Classify, request, timeout=CALL_TIMEOUT_S)


def http_client(port: int, path: str, body: bytes, content_type: str,
                server: str) -> Callable[[], bytes]:
    """POST `body` to `path` on one keep-alive HTTP connection (as a client library's session
    holds one); each call returns the answer's body, and raises on a status other than 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT_S)

    def call() -> bytes:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{server} answered {response.status}: {answer[:200]!r}")
        return answer

    return call


def served_settings(server_args: Sequence[str]) -> Settings:
    """The settings the benchmarked server runs with: its flags over this environment (which it
    inherits), so the raw reference can take its TensorFlow threads and dispatchers."""
    return Settings.from_sources(list(server_args), os.environ)


def start_server(target: Target, port: int, metrics_port: int,
                 extra_args: Sequence[str]) -> subprocess.Popen[bytes]:
    return start(front_command(f"127.0.0.1:{port}", target.model_base, target.model_name,
                               "--log-level", "WARNING", *extra_args, metrics_port=metrics_port))


def wait_serving(channel: grpc.Channel, server: subprocess.Popen[bytes],
                 target: Target) -> None:
    """SERVING, with every version it loads warm (none warming up beside the steps)."""
    if wait_until_ready(channel, target.model_base, target.model_name, SERVER_START_TIMEOUT_S,
                        lambda: server.poll() is not None):
        return
    if server.poll() is not None:
        raise RuntimeError(f"the server exited with status {server.returncode}")
    raise RuntimeError("the server did not become SERVING in time")


@dataclass(frozen=True)
class Front:
    """A started front: a channel to it, and the probe of its counters."""

    channel: grpc.Channel
    probe: ServerProbe

    def window(self, target: Target, image: bytes, concurrency: int, seconds: float) -> Window:
        """`concurrency` clients sending `image` to `target`'s version for `seconds`."""
        clients = partial(grpc_client, self.channel, image, target.version)
        return measure(clients, concurrency, seconds, self.probe)


@contextlib.contextmanager
def running_front(target: Target, server_args: Sequence[str]) -> Iterator[Front]:
    """A fresh front on free loopback ports, ready (`wait_serving`), stopped on the way out."""
    port, metrics_port = free_port(), free_port()
    server = start_server(target, port, metrics_port, server_args)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", -1)]) as channel:
            wait_serving(channel, server, target)
            yield Front(channel, ServerProbe(server.pid, metrics_port))
    finally:
        server.terminate()
        server.wait(30)


@contextlib.contextmanager
def running_reference(module: str, args: Sequence[str], start_timeout_s: float) -> Iterator[Front]:
    """A reference server (`python -m module --port N args`) on a free loopback port, once it
    accepts connections (the references listen only when ready), stopped on the way out."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args],
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=start_timeout_s)
            yield Front(channel, ServerProbe(server.pid))
    finally:
        server.terminate()
        server.wait(30)


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
    return encoded(np.clip(pixels, 0, 255).astype(np.uint8), "JPEG", quality=90)


def find_target(model_base: Path, model_name: str, version: int | None,
                image: Path | None) -> Target:
    model_dir = model_base / model_name
    numbers = scan_versions(model_dir)
    if not numbers:
        raise SystemExit(f"no versions under {model_dir}")
    chosen = version if version is not None else max(numbers)
    return Target(model_dir / str(chosen), model_base, model_name, chosen, bench_image(image))


def add_target_arguments(parser: argparse.ArgumentParser, image_help: str) -> None:
    """The flags every benchmark of a served version shares: where its JSON goes, which
    version it serves, and the image it sends."""
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--version", type=int, help="default: the highest version")
    parser.add_argument("--image", type=Path, help=image_help)


def write_report(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def publish(path: Path, result: dict[str, Any], lines: Sequence[str]) -> None:
    """Write `result` to `path` as JSON and print its summary `lines` and where it went."""
    write_report(path, result)
    print("\n".join(lines))
    print(f"written to {path}")
