"""Benchmark one SavedModel version: the raw floor in process, decoding across real image sizes,
Classify over gRPC on loopback, a naive peer, and the ratios between them, all in one run.
`python -m devtools.bench --out FILE` (or `make bench`, which also runs devtools.bench.batch_bench).

1. raw floor: the `serving_default` signature called in this process on preprocessed input,
   run as the server runs it (`served_settings`: its TensorFlow threads, and its graph frozen
   unless `--server-arg=--freeze-graph=false`): median single-image latency, and images/s (and
   CPU ms per image) for a few batch sizes from one caller and for the best of them from as
   many callers as the server has batch dispatchers; the best batch throughput is the floor.
   The signature as TensorFlow's loader gives it (variables, not constants) is measured once
   beside it;
2. decoding, for a matrix of inputs generated from the benchmark image (a 200x150 HAM10000
   image, a 600x450 and a 1024x768 dermatoscope frame, a 4032x3024 phone photo, a 600x450 PNG):
   bytes, and the median cost of validation + decoding + preprocessing at full scale (what
   dermserve did before) and at reduced scale (`Image.draft`, what it does:
   dermserve/core/preprocessing.py `decode_for_model`);
3. Classify: the real server with its default settings (embedded backend + micro-batching;
   `--server-arg=--batch-max-size=N` and the like change them) in a child process, on 127.0.0.1:
   the benchmark image at concurrency 1 and 32 in rounds paired with the raw model (each served
   window beside a raw one, ABBA order: `paired_rounds`), then at 8 (p50/p95/p99, calls/s, and
   the CPU the server and the clients spent per call), then each matrix input at 1 (p50) and 8
   (calls/s);
4. the naive peer (devtools/bench/naive_peer.py, a reference, not product code: an HTTP handler that
   calls the Keras model's `predict` per request, no batching, TensorFlow's default threads)
   at concurrency 1, 8 and 32 with the benchmark image, and at 8 with the phone photo;
5. the gRPC floor (devtools/bench/grpc_floor.py, a reference, not product code: a Classify that
   answers a canned response at once) at concurrency 1 and 32: the round trip and the CPU per
   call of Python gRPC alone, which any front written on it pays;
6. ratios against the targets (issue 13), each the median over the paired rounds: p50 at
   concurrency 1 <= 1.10 x (raw single + decoding); throughput at 32 >= 0.90 x the raw best
   batch throughput; and dermserve's throughput at 8 and 32 >= 5 x the peer's, with a lower p50.
   The same two ratios from the sweep's figures (unpaired) are reported beside them, and the
   ceilings the floor leaves each of the first two (`ceilings`).
Each main step and each paired window runs for `--step-seconds` (default 10) after a short
warm-up; the matrix steps for half of it. A run takes about eight minutes. Server, clients and peer
share the machine's cores, as they would on one pod, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import grpc

from dermserve.core.backends.savedmodel import configure_threads
from dermserve.core.model_config import ModelConfig
from devtools.bench import grpc_floor
from devtools.bench.harness import (
    CONCURRENCY_LEVELS,
    DEFAULT_STEP_SECONDS,
    P50_TARGET,
    PHONE_PHOTO,
    RawModel,
    ServerProbe,
    Target,
    Window,
    add_target_arguments,
    as_loaded,
    decoding,
    decoding_matrix,
    drive,
    find_target,
    grpc_client,
    http_client,
    matrix_images,
    pooled,
    publish,
    raw_floor,
    running_front,
    running_reference,
    served_settings,
    summary,
)
from devtools.bench.naive_peer import PATH as PEER_PATH
from devtools.stack.ports import free_port

MATRIX_CONCURRENCY = 8  # clients for each matrix input's throughput
PAIRED_ROUNDS = 4  # rounds of raw and served windows side by side (`paired_rounds`): an even
# number, so the ABBA order balances, and enough for a median that one slow moment cannot move
FLOOR_START_TIMEOUT_S = 60.0  # seconds; the floor imports grpc and the stubs, nothing more
PEER_START_TIMEOUT_S = 300.0  # seconds; Keras traces `predict` on the first call, slowly
THROUGHPUT_TARGET = 0.90  # throughput at concurrency 32 over raw best batch throughput, at least
PEER_TARGET = 5.0  # dermserve's throughput over the naive peer's at 8 and 32, at least

def over_grpc(target: Target, matrix: dict[str, bytes], seconds: float,
              server_args: Sequence[str], raw: RawModel, raw_sweep: dict[str, Any],
              decode_ms: float) -> dict[str, Any]:
    """Concurrency 1 and 32 in rounds paired with the raw model (`paired_rounds`), then 8, then
    each matrix input at 1 and 8."""
    with running_front(target, server_args) as front:
        window = partial(front.window, target)
        paired = paired_rounds(raw, (raw_sweep["best_batch_size"], raw_sweep["best_callers"]),
                               decode_ms, partial(window, target.image), seconds)
        main = {"1": paired.pop("served_1"), "32": paired.pop("served_32"),
                "8": pooled([window(target.image, 8, seconds)])}
        per_input = {name: {str(c): pooled([window(image, c, seconds / 2)])
                            for c in (1, MATRIX_CONCURRENCY)}
                     for name, image in matrix.items()}
        return {**main, "paired": paired, "matrix": per_input}


def paired_rounds(raw: RawModel, best: tuple[int, int], decode_ms: float,
                  served: Callable[[int, float], Window], seconds: float,
                  count: int = PAIRED_ROUNDS, first: int = 0) -> dict[str, Any]:
    """The two ratios against the raw model, each served window beside a raw one of the same
    length: this machine's speed drifts by 10-20% over minutes, more than the margins, and a raw
    figure taken minutes before the served one measured the drift as much as the server.

    `count` rounds, in ABBA order (odd rounds reversed, counting from `first`) so that a steady
    drift favours neither side: raw single, served at 1, raw in the sweep's best setup (batch
    size, callers), served at 32.
    Each round gives its own two ratios; the run reports their medians. The raw figure in a
    round is a new measurement of the setup the sweep chose, not the sweep's best figure, which
    is the largest of seven noisy ones and so biased upward."""
    rounds: list[dict[str, Any]] = []
    served_1: list[Window] = []
    served_32: list[Window] = []
    for index in range(first, first + count):
        figures: dict[str, Any] = {}
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("raw_single", lambda: summary(raw.single(seconds))),
            ("served_1", lambda: served(1, seconds)),
            ("raw_batch", lambda: raw.batch(best[0], seconds, best[1])),
            ("served_32", lambda: served(32, seconds))]
        for name, take in steps if index % 2 == 0 else reversed(steps):
            figures[name] = take()
        served_1.append(figures["served_1"])
        served_32.append(figures["served_32"])
        one, thirty_two = pooled([figures["served_1"]]), pooled([figures["served_32"]])
        floor_ms = figures["raw_single"]["p50_ms"] + decode_ms
        rounds.append({
            "raw_single_p50_ms": figures["raw_single"]["p50_ms"],
            "raw_single_mean_ms": figures["raw_single"]["mean_ms"],
            "served_c1_p50_ms": one["p50_ms"],
            "p50_c1_over_raw_single_plus_decode": one["p50_ms"] / floor_ms,
            "raw_batch_images_per_s": figures["raw_batch"][0],
            "raw_batch_cpu_ms_per_image": figures["raw_batch"][1],
            "served_c32_calls_per_s": thirty_two["calls_per_s"],
            "throughput_c32_over_raw_best_batch": thirty_two["calls_per_s"]
            / figures["raw_batch"][0]})
    return {"rounds": rounds, "window_seconds": seconds, "best_batch_size": best[0],
            "best_callers": best[1],
            "decode_ms": decode_ms, "served_1": pooled(served_1), "served_32": pooled(served_32)}


def peer_client(port: int, image: bytes) -> Callable[[], object]:
    """The naive peer's client: the image as the body of one keep-alive connection's POSTs."""
    return http_client(port, PEER_PATH, image, "application/octet-stream", "the naive peer")


def wait_peer(port: int, image: bytes, peer: subprocess.Popen[bytes]) -> None:
    """Poll until the peer answers one classification (its first call also traces `predict`)."""
    until = time.monotonic() + PEER_START_TIMEOUT_S
    while time.monotonic() < until and peer.poll() is None:
        try:
            peer_client(port, image)()
            return
        except OSError:
            time.sleep(0.5)  # a starting process: nothing to wait on but its port
    raise RuntimeError("the naive peer did not answer in time")


def naive_peer(target: Target, phone_photo: bytes, seconds: float) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "devtools.bench.naive_peer",
               "--model-dir", str(target.version_dir), "--port", str(port)]
    peer = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stderr=subprocess.DEVNULL)
    try:
        wait_peer(port, target.image, peer)

        def step(image: bytes, concurrency: int) -> dict[str, Any]:
            return drive(partial(peer_client, port, image), concurrency, seconds,
                         ServerProbe(peer.pid))

        results = {str(c): step(target.image, c) for c in CONCURRENCY_LEVELS}
        return {**results, "matrix": {PHONE_PHOTO: {str(MATRIX_CONCURRENCY): step(
            phone_photo, MATRIX_CONCURRENCY)}}}
    finally:
        peer.terminate()
        peer.wait(30)


def naive_peer_or_error(target: Target, phone_photo: bytes,
                        seconds: float) -> dict[str, Any]:
    """The peer's figures, or why there are none: a failed peer must not cost the whole run."""
    try:
        return naive_peer(target, phone_photo, seconds)
    except (OSError, RuntimeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def grpc_floor_steps(target: Target, seconds: float) -> dict[str, Any]:
    """The floor at concurrency 1 and 32, with the benchmark image, as Classify is driven."""
    with running_reference(grpc_floor.__name__, [], FLOOR_START_TIMEOUT_S) as floor:
        clients = partial(grpc_client, floor.channel, target.image, target.version)
        return {str(c): drive(clients, c, seconds, floor.probe) for c in (1, 32)}


def floor_or_error(target: Target, seconds: float) -> dict[str, Any]:
    """The floor's figures, or why there are none: it must not cost the whole run."""
    try:
        return grpc_floor_steps(target, seconds)
    except (OSError, grpc.FutureTimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def ceilings(raw: dict[str, Any], decode: dict[str, Any], rounds: Sequence[dict[str, Any]],
             floor: dict[str, Any]) -> dict[str, Any]:
    """The best the two served ratios could be on this machine if a front added nothing to the
    floor but decoding: at concurrency 1, the floor's round trip on top of the raw single image
    and decoding; at 32, the raw model's CPU per image over that plus decoding and the floor's
    CPU per call (server and clients), with the cores as busy as under the raw model."""
    single = statistics.median(r["raw_single_p50_ms"] for r in rounds)
    decode_ms = decode["draft_decode"]["mean_ms"]
    model_cpu = raw["batch_cpu_ms_per_image"][raw["best_setup"]]
    per_call = floor["32"]["server_cpu_ms_per_call"] + floor["32"]["client_cpu_ms_per_call"]
    return {"p50_c1_over_raw_single_plus_decode":
            1.0 + floor["1"]["p50_ms"] / (single + decode["draft_decode"]["p50_ms"]),
            "throughput_c32_over_raw_best_batch": model_cpu / (model_cpu + decode_ms + per_call)}


def ratios(raw: dict[str, Any], decode: dict[str, Any], served: dict[str, Any],
           peer: dict[str, Any] | None, floor: dict[str, Any] | None = None) -> dict[str, Any]:
    """The targets, judged on the paired rounds (medians over rounds); the same ratios from the
    sweep's figures, measured minutes apart from the served ones, are reported beside them."""
    rounds = served["paired"]["rounds"]
    p50_ratio = statistics.median(r["p50_c1_over_raw_single_plus_decode"] for r in rounds)
    throughput_ratio = statistics.median(r["throughput_c32_over_raw_best_batch"] for r in rounds)
    floor_single = raw["single_image"]["p50_ms"] + decode["draft_decode"]["p50_ms"]
    result: dict[str, Any] = {
        "p50_c1_over_raw_single_plus_decode": p50_ratio,
        "p50_target_max": P50_TARGET, "p50_target_met": p50_ratio <= P50_TARGET,
        "throughput_c32_over_raw_best_batch": throughput_ratio,
        "throughput_target_min": THROUGHPUT_TARGET,
        "throughput_target_met": throughput_ratio >= THROUGHPUT_TARGET,
        "unpaired_p50_c1_over_sweep_single_plus_decode": served["1"]["p50_ms"] / floor_single,
        "unpaired_throughput_c32_over_sweep_best_batch":
            served["32"]["calls_per_s"] / raw["best_images_per_s"]}
    if floor is not None and "error" not in floor:
        result["ceilings"] = ceilings(raw, decode, rounds, floor)
    if peer is not None and "error" not in peer:
        result.update(peer_ratios(served, peer))
        # The most any server of this model could reach on this machine is the model's own
        # best batch throughput: the peer target is out of reach when this is under it.
        result["model_ceiling_c8_over_peer"] = statistics.median(
            r["raw_batch_images_per_s"] for r in rounds) / peer["8"]["calls_per_s"]
    return result


def peer_ratios(served: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    def speed(results: dict[str, Any], concurrency: int) -> float:
        return float(results[str(concurrency)]["calls_per_s"])

    over = {f"throughput_c{c}_over_peer": speed(served, c) / speed(peer, c)
            for c in CONCURRENCY_LEVELS[1:]}
    over[f"throughput_c{MATRIX_CONCURRENCY}_{PHONE_PHOTO}_over_peer"] = (
        speed(served["matrix"][PHONE_PHOTO], MATRIX_CONCURRENCY)
        / speed(peer["matrix"][PHONE_PHOTO], MATRIX_CONCURRENCY))
    p50_lower = served["1"]["p50_ms"] < peer["1"]["p50_ms"]
    return {**over, "p50_c1_over_peer": served["1"]["p50_ms"] / peer["1"]["p50_ms"],
            "peer_target_min": PEER_TARGET,
            "peer_target_met": p50_lower and all(
                over[f"throughput_c{c}_over_peer"] >= PEER_TARGET
                for c in CONCURRENCY_LEVELS[1:])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    target = find_target(args.model_base, args.model_name, args.version, args.image)
    config = ModelConfig.read(target.version_dir)
    matrix = matrix_images(target.image)
    server_args = list(args.server_arg)
    served = served_settings(server_args)
    # The raw model gets the TensorFlow threads the server starts with, so that the ratios
    # measure serving and not thread settings (bench-results/NOTES.md, "TensorFlow's threads").
    configure_threads(served.intra_op_threads, served.inter_op_threads)
    raw_model = RawModel(target, config, served.freeze_graph)
    raw = raw_floor(raw_model, args.step_seconds,
                    served.batching.workers if served.batching.enabled else 1)
    raw["frozen"] = raw_model.frozen
    if raw_model.frozen:
        raw["as_loaded"] = as_loaded(target, config, (raw["best_batch_size"],
                                                      raw["best_callers"]), args.step_seconds)
    decode = decoding(target.image, config.input, args.step_seconds)
    decode_matrix = decoding_matrix(matrix, config.input, args.step_seconds / 5)
    over = over_grpc(target, matrix, args.step_seconds, server_args, raw_model, raw,
                     decode["draft_decode"]["p50_ms"])
    peer = None if args.no_peer else naive_peer_or_error(target, matrix[PHONE_PHOTO],
                                                          args.step_seconds)
    floor = floor_or_error(target, args.step_seconds)
    return {"model": {"base": str(target.model_base), "name": target.model_name,
                      "version": target.version, "description": config.description,
                      "input": [config.input.height, config.input.width]},
            "image_bytes": len(target.image),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        # Other work on the machine skews every figure; judge them with this.
                        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]]},
            "step_seconds": args.step_seconds, "server_args": server_args,
            "raw_tensorflow_threads": {"intra_op": served.intra_op_threads,
                                       "inter_op": served.inter_op_threads},
            "raw": raw, "decode": decode, "decode_matrix": decode_matrix, "grpc": over,
            "naive_peer": peer, "grpc_floor": floor,
            "ratios": ratios(raw, decode, over, peer, floor)}


def report_lines(result: dict[str, Any]) -> list[str]:
    """The figures the README quotes, as a short table."""
    raw, served, peer = result["raw"], result["grpc"], result["naive_peer"]
    lines = [f"raw{' (frozen)' if raw.get('frozen') else ''}: single "
             f"{raw['single_image']['p50_ms']:.1f} ms, best batch "
             f"{raw['best_images_per_s']:.1f} img/s (batch {raw['best_setup']})",
             *as_loaded_lines(raw),
             f"Classify: p50 c=1 {served['1']['p50_ms']:.1f} ms; calls/s c=8 "
             f"{served['8']['calls_per_s']:.1f}, c=32 {served['32']['calls_per_s']:.1f}",
             *paired_lines(served["paired"]),
             *breakdown_line(served["1"]),
             *cost_lines(raw, served["32"]),
             "input            bytes  full ms  draft ms  p50 c=1 ms  calls/s c=8"]
    for name, decoded in result["decode_matrix"].items():
        steps = served["matrix"][name]
        lines.append(f"{name:15s} {decoded['bytes']:7d} {decoded['full_decode']['p50_ms']:8.1f}"
                     f" {decoded['draft_decode']['p50_ms']:9.1f} {steps['1']['p50_ms']:11.1f}"
                     f" {steps[str(MATRIX_CONCURRENCY)]['calls_per_s']:12.1f}")
    if peer is not None and "error" in peer:
        lines.append(f"naive peer: failed ({peer['error']})")
    elif peer is not None:
        lines.append(f"naive peer: p50 c=1 {peer['1']['p50_ms']:.1f} ms; calls/s c=8 "
                     f"{peer['8']['calls_per_s']:.1f}, c=32 {peer['32']['calls_per_s']:.1f}")
    lines.extend(floor_lines(result.get("grpc_floor")))
    lines.extend(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}"
                 for key, value in result["ratios"].items() if key != "ceilings")
    lines.extend(f"ceiling {key}: {value:.3f}"
                 for key, value in result["ratios"].get("ceilings", {}).items())
    return lines


def floor_lines(floor: dict[str, Any] | None) -> list[str]:
    if floor is None:
        return []
    if "error" in floor:
        return [f"gRPC floor: failed ({floor['error']})"]
    return [f"gRPC floor: p50 c=1 {floor['1']['p50_ms']:.2f} ms; c=32 "
            f"{floor['32']['calls_per_s']:.0f} calls/s, CPU per call server "
            f"{floor['32']['server_cpu_ms_per_call']:.2f} ms, clients "
            f"{floor['32']['client_cpu_ms_per_call']:.2f} ms"]


def as_loaded_lines(raw: dict[str, Any]) -> list[str]:
    if "as_loaded" not in raw:
        return []
    loaded = raw["as_loaded"]
    return [f"raw as loaded (variables): single {loaded['single_image']['p50_ms']:.1f} ms, "
            f"batch {raw['best_setup']} {loaded['best_setup_images_per_s']:.1f} img/s "
            f"({loaded['best_setup_cpu_ms_per_image']:.1f} CPU ms/image, frozen "
            f"{raw['batch_cpu_ms_per_image'][raw['best_setup']]:.1f})"]


def paired_lines(paired: dict[str, Any]) -> list[str]:
    """Each paired round's two ratios, so the spread behind the medians is in sight."""
    return [f"round {index}: raw single {r['raw_single_p50_ms']:.1f} ms, served c=1 "
            f"{r['served_c1_p50_ms']:.1f} ms ({r['p50_c1_over_raw_single_plus_decode']:.3f}x); "
            f"raw batch {paired['best_batch_size']}x{paired['best_callers']} "
            f"{r['raw_batch_images_per_s']:.1f} img/s, "
            f"served c=32 {r['served_c32_calls_per_s']:.1f} "
            f"({r['throughput_c32_over_raw_best_batch']:.3f}x)"
            for index, r in enumerate(paired["rounds"], 1)]


def breakdown_line(step: dict[str, Any]) -> list[str]:
    """Where a call's time goes at concurrency 1, in means: transport, handler, decode, model."""
    if "server_model_ms_mean" not in step or "server_handler_ms_mean" not in step:
        return []
    handler, decode = step["server_handler_ms_mean"], step["server_decode_ms_mean"]
    model = step["server_model_ms_mean"]
    return [f"at c=1, means: client {step['mean_ms']:.1f} ms = transport "
            f"{step['mean_ms'] - handler:.1f} + handler {handler:.1f} (decode {decode:.1f}, "
            f"model call {model:.1f}, the rest {handler - decode - model:.1f})"]


def cost_lines(raw: dict[str, Any], step: dict[str, Any]) -> list[str]:
    """Where the time goes at concurrency 32, in CPU per image: robust to other work."""
    if "server_cpu_ms_per_call" not in step:
        return []
    threads = step.get("server_cpu_ms_per_call_by_thread", {})
    split = "".join(f", {name} {ms:.2f}" for name, ms in threads.items())
    return [f"CPU at c=32: server {step['server_cpu_ms_per_call']:.1f} ms/call (mean batch "
            f"{step.get('mean_batch_images', float('nan')):.1f}{split}), clients "
            f"{step['client_cpu_ms_per_call']:.2f} ms/call; raw best batch "
            f"{raw['batch_cpu_ms_per_image'][raw['best_setup']]:.1f} ms/image"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser, image_help="image to send (default: a 600x450 JPEG)")
    parser.add_argument("--step-seconds", type=float, default=DEFAULT_STEP_SECONDS)
    parser.add_argument("--no-peer", action="store_true", help="skip the naive peer")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the server, e.g. --server-arg=--batch-max-wait-ms=1")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    publish(args.out, result, report_lines(result))


if __name__ == "__main__":
    main()
