"""`python -m devtools.bench.warm_up_bench`: what warming a version up at every batch size costs and
buys, in one process on one version (a line of `make bench`). Prints and writes JSON.

    import:    RSS once TensorFlow is imported, before any version (every TF server pays it);
    load:      LoadedVersion.load with the one-image warm-up (the graph frozen, as the embedded
               backend loads it, unless --no-freeze-graph): seconds and RSS after;
    warm-up:   the warm-up at every size from --max-batch down to 1 (what the front does at load
               with its default --batch-max-size): seconds and RSS after the largest batch and
               after them all;
    in use:    every size again, twice, as a server meets them under load: the RSS each pass
               adds once the warm-up has run (the growth a soak would see);
    swaps:     with --swaps N, N hot swaps as the embedded backend makes them (a successor
               loaded beside the version, then the old one dropped and its memory reclaimed):
               RSS with both loaded and after each unload.

RSS is this process's resident set (devtools/proc.py). TensorFlow keeps buffers and kernels per
input shape, so without the warm-up the "in use" growth happens while serving instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermserve.core import defaults
from devtools import proc
from devtools.bench.harness import add_target_arguments, find_target, write_report

MIB = 2 ** 20


def rss_mib() -> float:
    """This process's resident set now, in MiB."""
    return (proc.rss_bytes(os.getpid()) or 0) / MIB


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dermserve.core.backends.savedmodel import LoadedVersion

    target = find_target(args.model_base, args.model_name, args.version, None)
    report: dict[str, Any] = {"benchmark": "warm_up_by_batch_size",
                              "version_dir": str(target.version_dir),
                              "max_batch": args.max_batch, "rss_mib_at_start": rss_mib()}
    import tensorflow  # noqa: F401 - its own share, apart from the version's (every peer pays it)

    report["rss_mib_after_importing_tensorflow"] = rss_mib()
    started = time.perf_counter()
    version = LoadedVersion.load(target.version_dir, freeze=args.freeze_graph)
    report["load"] = {"seconds": time.perf_counter() - started, "rss_mib": rss_mib(),
                      "frozen": version.frozen}
    spec = version.config.input

    def batch(size: int) -> np.ndarray:
        return np.zeros((size, spec.height, spec.width, 3), np.uint8)

    started = time.perf_counter()
    version.predict(batch(args.max_batch))
    after_largest = rss_mib()
    version.warm_up(args.max_batch)
    report["warm_up"] = {"seconds": time.perf_counter() - started,
                         "rss_mib_after_largest_batch": after_largest,
                         "rss_mib_after_every_size": rss_mib()}
    passes = []
    for _ in range(2):
        before = rss_mib()
        for size in range(1, args.max_batch + 1):
            version.predict(batch(size))
        passes.append(rss_mib() - before)
    report["in_use_growth_mib_per_pass"] = passes
    report["warm_up"]["growth_mib"] = (report["warm_up"]["rss_mib_after_every_size"]
                                       - report["load"]["rss_mib"])
    serving = [version]  # the only reference, so that a swap can drop it
    del version
    report["swaps"] = hot_swaps(serving, target.version_dir, args)
    return report


def hot_swaps(serving: list[Any], version_dir: Path,
              args: argparse.Namespace) -> list[dict[str, float]]:
    """`--swaps` hot swaps as the embedded backend makes them: a successor loaded and warmed up
    beside `serving[0]`, then the old one dropped and its memory reclaimed. RSS with both loaded
    and after each unload: what a front keeps from every release it serves."""
    from dermserve.core.backends.savedmodel import LoadedVersion, reclaim_memory

    swaps = []
    for _ in range(args.swaps):
        successor = LoadedVersion.load(version_dir, args.max_batch, args.freeze_graph)
        both = rss_mib()
        serving[0] = successor
        del successor
        reclaim_memory()
        swaps.append({"rss_mib_both_loaded": both, "rss_mib_after_unload": rss_mib()})
    return swaps


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.warm_up_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser, image_help="unused (blank images are sent)")
    parser.add_argument("--max-batch", type=int, default=defaults.DEFAULT_BATCH_MAX_SIZE,
                        help="largest batch size (default: the front's --batch-max-size)")
    parser.add_argument("--swaps", type=int, default=0,
                        help="hot swaps to make after the warm-up (a successor loaded beside "
                             "the version, then the old one dropped), with RSS after each")
    parser.add_argument("--freeze-graph", action=argparse.BooleanOptionalAction,
                        default=defaults.DEFAULT_FREEZE_GRAPH,
                        help="load the version as the embedded backend does by default: its "
                             "variables folded into constants (--no-freeze-graph: as stored)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(args)
    write_report(args.out, report)
    print(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
