"""`python -m devtools.threads_bench --out FILE`: the raw model under each TensorFlow thread
setting the embedded backend can take (`--intra-op-threads`, `--inter-op-threads`), the evidence
for their defaults (core/defaults.py). Prints and writes JSON.

TensorFlow fixes its thread pools at its first op, so each setting runs in a child process of its
own: the `serving_default` signature on the benchmark image, as devtools.bench's raw floor calls
it, for the median single-image latency, and images/s at batches of 32 from one caller and from
two at once (as the micro-batcher's two dispatchers send theirs). The settings take turns, in
reversed order every other round, so that the machine's drift favours none; each figure is the
median over the rounds, and the ratios compare each setting with TensorFlow's own choice (0, 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from devtools.bench import RawModel, add_target_arguments, find_target, write_report

SETTINGS = ((0, 0), (1, 0), (1, 1))
"""(intra-op, inter-op) threads: TensorFlow's choice, dermserve's default, and one op at a time."""
DEFAULT_ROUNDS = 2
DEFAULT_SECONDS = 5.0  # per figure per round
BATCH = 32  # images; the front's largest micro-batch when these defaults were chosen (it is 8
# now, DEFAULT_BATCH_MAX_SIZE; the committed threads-*.json were measured at 32)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """In this (child) process: the figures under args.intra/args.inter."""
    from core.backends.savedmodel import configure_threads
    from core.model_config import ModelConfig

    configure_threads(args.intra, args.inter)
    target = find_target(args.model_base, args.model_name, args.version, args.image)
    raw = RawModel(target, ModelConfig.read(target.version_dir))
    single = raw.single(args.seconds)
    return {"single_p50_ms": statistics.median(single) * 1000.0,
            "batch_images_per_s_one_caller": raw.batch(BATCH, args.seconds)[0],
            "batch_images_per_s_two_callers": raw.batch(BATCH, args.seconds, callers=2)[0]}


def child(args: argparse.Namespace, intra: int, inter: int) -> dict[str, float]:
    command = [sys.executable, "-m", "devtools.threads_bench", "--child", "--out", "-",
               "--intra", str(intra), "--inter", str(inter), "--seconds", str(args.seconds),
               "--model-base", str(args.model_base), "--model-name", args.model_name]
    if args.version is not None:
        command += ["--version", str(args.version)]
    if args.image is not None:
        command += ["--image", str(args.image)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(args: argparse.Namespace,
        take: Callable[[argparse.Namespace, int, int], dict[str, float]] = child
        ) -> dict[str, Any]:
    """Every setting once per round through `take` (a child process), in reversed order every
    other round; medians over rounds, and their ratios to TensorFlow's own choice."""
    runs: dict[str, list[dict[str, float]]] = {name(s): [] for s in SETTINGS}
    for index in range(args.rounds):
        for setting in SETTINGS if index % 2 == 0 else reversed(SETTINGS):
            figures = take(args, *setting)
            runs[name(setting)].append(figures)
            print(name(setting), json.dumps(figures), flush=True)
    medians = {key: {figure: statistics.median(r[figure] for r in rounds)
                     for figure in rounds[0]} for key, rounds in runs.items()}
    reference = medians[name(SETTINGS[0])]
    return {"benchmark": "tensorflow_threads", "rounds": args.rounds, "seconds": args.seconds,
            "batch": BATCH, "runs": runs, "medians": medians,
            "over_tensorflow_default": {key: {figure: value / reference[figure]
                                              for figure, value in figures.items()}
                                        for key, figures in medians.items()}}


def name(setting: tuple[int, int]) -> str:
    return f"intra{setting[0]}_inter{setting[1]}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.threads_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser, image_help="image to classify (default: a 600x450 JPEG)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return
    result = run(args)
    write_report(args.out, result)
    for key, ratios in result["over_tensorflow_default"].items():
        print(key, {figure: round(value, 3) for figure, value in ratios.items()})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
