"""`python -m devtools.aio_ab --out FILE`: the front against the asyncio reference
(devtools/aio_reference.py), each beside the raw model, in the same run. Prints and writes JSON.

Both servers run at once on free loopback ports; each is idle while the other is measured. A
round measures each server with devtools.bench's paired round (raw single, served at 1, raw in
the front's batch setup, served at 32), the servers in turn, in reversed order every other
round, so that the machine's drift favours neither. Per server it reports the median of its
rounds' two ratios (the issue 13 targets: p50 at 1 <= 1.10x the raw single plus decoding,
calls/s at 32 >= 0.90x the raw best setup), and its CPU per call at 32 split by thread name
(TensorFlow's pool, Python's threads, gRPC's event engine) beside the raw model's CPU per image.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from functools import partial
from typing import Any

from core import defaults
from core.backends.savedmodel import configure_threads
from core.model_config import ModelConfig
from devtools import aio_reference
from devtools.bench import (
    SERVER_START_TIMEOUT_S,
    Front,
    RawModel,
    Target,
    add_target_arguments,
    decoding,
    find_target,
    paired_rounds,
    publish,
    running_front,
    running_reference,
)

DEFAULT_ROUNDS = 4  # an even number, so that each server goes first as often
DEFAULT_SECONDS = 8.0  # per window
RATIOS = ("p50_c1_over_raw_single_plus_decode", "throughput_c32_over_raw_best_batch")


def compare(raw: RawModel, decode_ms: float, servers: dict[str, Front], target: Target,
            rounds: int, seconds: float) -> dict[str, Any]:
    """Each server's paired rounds, the servers taking turns (reversed every other round)."""
    best = (defaults.DEFAULT_BATCH_MAX_SIZE, defaults.DEFAULT_BATCH_WORKERS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for index in range(rounds):
        names = list(servers) if index % 2 == 0 else list(reversed(servers))
        for name in names:
            window = partial(servers[name].window, target, target.image)
            results[name].append(paired_rounds(raw, best, decode_ms, window, seconds,
                                               count=1, first=index))
    return {name: summarise(paired) for name, paired in results.items()}


def summarise(paired: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds, the medians of their ratios and of its CPU per call at 32."""
    rounds = [item for result in paired for item in result["rounds"]]
    at_32 = [result["served_32"] for result in paired]
    names = {name for step in at_32 for name in step.get("server_cpu_ms_per_call_by_thread", {})}
    return {
        **{ratio: statistics.median(item[ratio] for item in rounds) for ratio in RATIOS},
        "raw_batch_cpu_ms_per_image": statistics.median(
            item["raw_batch_cpu_ms_per_image"] for item in rounds),
        "server_cpu_ms_per_call_c32": statistics.median(
            step["server_cpu_ms_per_call"] for step in at_32),
        "server_cpu_ms_per_call_c32_by_thread": {
            name: statistics.median(step.get("server_cpu_ms_per_call_by_thread", {}).get(name, 0.0)
                                    for step in at_32) for name in sorted(names)},
        "rounds": rounds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    target = find_target(args.model_base, args.model_name, args.version, args.image)
    config = ModelConfig.read(target.version_dir)
    configure_threads(defaults.DEFAULT_INTRA_OP_THREADS, defaults.DEFAULT_INTER_OP_THREADS)
    raw = RawModel(target, config)
    decode_ms = decoding(target.image, config.input, args.seconds)["draft_decode"]["p50_ms"]
    reference_args = ["--model-base", str(target.model_base), "--model-name", target.model_name]
    with running_front(target, []) as front, running_reference(
            aio_reference.__name__, reference_args, SERVER_START_TIMEOUT_S) as reference:
        servers = compare(raw, decode_ms, {"front": front, "aio_reference": reference}, target,
                          args.rounds, args.seconds)
    return {"benchmark": "aio_ab", "model": {"name": target.model_name,
                                            "version": target.version},
            "image_bytes": len(target.image), "decode_ms": decode_ms, "rounds": args.rounds,
            "window_seconds": args.seconds, "servers": servers}


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for name, figures in result["servers"].items():
        threads = ", ".join(f"{thread} {ms:.2f}" for thread, ms in
                            figures["server_cpu_ms_per_call_c32_by_thread"].items())
        lines.append(f"{name:14s} p50 c=1 {figures[RATIOS[0]]:.3f}x, calls/s c=32 "
                     f"{figures[RATIOS[1]]:.3f}x; CPU ms per call at 32 "
                     f"{figures['server_cpu_ms_per_call_c32']:.2f} ({threads}) against the raw "
                     f"model's {figures['raw_batch_cpu_ms_per_image']:.2f} per image")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.aio_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser, image_help="image to send (default: a 600x450 JPEG)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per window")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    publish(args.out, result, report_lines(result))


if __name__ == "__main__":
    main()
