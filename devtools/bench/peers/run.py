"""dermserve against the reference peers (KServe, MLServer, BentoML) on one model version, in one
run: `python -m devtools.bench.peers --out FILE` (`make bench` runs it).

1. start dermserve (its defaults: devtools/bench/harness.py `running_front`, serving the version
   alone, as each peer serves it) and each peer (launch.py), all on loopback at once, so that
   every window below runs beside the same idle neighbours;
2. check that each peer answers the same probabilities as dermserve (at most AGREEMENT_ATOL
   apart, in label order) on every image; a peer that does not is not timed (its error is kept);
3. paired rounds: for each image (the 200x150 HAM10000 image, a 600x450 frame and a 12 MP phone
   JPEG: harness `matrix_images`) and each concurrency (1, 8, 32), one window per server, the
   servers' order reversed every other round (ABBA) so a drift favours none; each server's
   windows of one step pooled over the rounds: p50/p99, calls/s, the server's CPU per call (its
   whole process tree), and its resident memory (the tree's RSS) once ready, before any
   timed window (the model loaded and warm), and at the end (what serving the windows added);
4. the issue's targets, met or not, per image, and each place a peer beats dermserve with the
   figures that say why (CPU per call, and cores busy per call at concurrency 1).

The clients run on the same cores as the servers, as in the other benchmarks: compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import signal
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from dermserve.core.model_config import ModelConfig
from devtools.bench import harness
from devtools.bench.harness import CONCURRENCY_LEVELS, Window
from devtools.bench.peers import clients, launch
from devtools.bench.peers.report import report_lines
from devtools.bench.version_cost import alone

IMAGES = ("jpeg_200x150", "jpeg_600x450", "jpeg_4032x3024")  # harness.MATRIX_SIZES' names
DEFAULT_SECONDS = 3.0  # seconds per window; 36 windows a round
DEFAULT_ROUNDS = 2  # an even number, so the ABBA order balances
AGREEMENT_ATOL = 1e-4  # probability; dermserve runs a frozen graph, the peers the loaded one
THROUGHPUT_TARGET = 1.5  # dermserve's calls/s at 32 over the best peer's, at least
DERMSERVE = "dermserve"


@dataclass(frozen=True)
class Server:
    """One server under test: its name and label, a client factory, a probe of its processes."""

    name: str
    label: str
    new_client: Callable[[bytes], clients.Call]
    probe: launch.TreeProbe


class Disagrees(RuntimeError):
    """A peer answered other probabilities than dermserve for the same image."""


def agreement(reference: Server, peer: Server, images: dict[str, bytes]) -> float:
    """The largest difference between `peer`'s and dermserve's probabilities over `images`."""
    worst = 0.0
    for name, image in images.items():
        expected, got = reference.new_client(image)(), peer.new_client(image)()
        if got.shape != expected.shape:
            raise Disagrees(f"{peer.name} answered shape {got.shape} for {name}, "
                            f"dermserve {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > AGREEMENT_ATOL:
        raise Disagrees(f"{peer.name} differs from dermserve by {worst:.2e} (> {AGREEMENT_ATOL})")
    return worst


Windows = dict[str, dict[str, dict[int, list[Window]]]]  # server -> image -> concurrency -> windows


def paired_rounds(servers: Sequence[Server], images: dict[str, bytes], seconds: float,
                  rounds: int) -> Windows:
    """Every (image, concurrency) step once per server per round, the order reversed each round."""
    windows: Windows = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for index in range(rounds):
        order = list(servers) if index % 2 == 0 else list(reversed(servers))
        for image_name, image in images.items():
            for concurrency in CONCURRENCY_LEVELS:
                for server in order:
                    windows[server.name][image_name][concurrency].append(harness.measure(
                        partial(server.new_client, image), concurrency, seconds, server.probe))
    return windows


def figures(windows: Windows) -> dict[str, dict[str, dict[str, Any]]]:
    """server -> image -> concurrency (as text) -> the pooled figures (harness `pooled`)."""
    return {server: {image: {str(c): harness.pooled(steps) for c, steps in by_c.items()}
                     for image, by_c in by_image.items()}
            for server, by_image in windows.items()}


def version_bytes(version_dir: Path) -> int:
    """The model's own size: every file of its version directory."""
    return sum(path.stat().st_size for path in version_dir.rglob("*") if path.is_file())


def win(peer: str, metric: str, results: dict[str, Any], image: str) -> dict[str, Any]:
    """Where `peer` beats dermserve on `metric`, with the figures that say why: the servers' CPU
    per call, and at concurrency 1 the cores each keeps busy per call (CPU over wall time)."""
    def why(name: str) -> dict[str, float]:
        one, many = results[name][image]["1"], results[name][image]["32"]
        return {"server_cpu_ms_per_call_c1": one.get("server_cpu_ms_per_call", float("nan")),
                "cores_per_call_c1": one.get("server_cpu_ms_per_call", float("nan"))
                / one["p50_ms"],
                "server_cpu_ms_per_call_c32": many.get("server_cpu_ms_per_call", float("nan"))}

    return {"peer": peer, "image": image, "metric": metric, "peer_why": why(peer),
            "dermserve_why": why(DERMSERVE)}


def image_targets(results: dict[str, Any], image: str) -> dict[str, Any]:
    """The issue's three latency and throughput targets on one image, and the peers that win."""
    peers = [name for name in results if name != DERMSERVE]
    ours = results[DERMSERVE][image]

    def at(name: str, concurrency: int, key: str) -> float:
        return float(results[name][image][str(concurrency)][key])

    best = max(peers, key=lambda name: at(name, 32, "calls_per_s"))
    ratio = ours["32"]["calls_per_s"] / at(best, 32, "calls_per_s")
    wins = [win(p, "calls_per_s_c32", results, image) for p in peers
            if at(p, 32, "calls_per_s") > ours["32"]["calls_per_s"]]
    wins += [win(p, "p50_ms_c1", results, image) for p in peers
             if at(p, 1, "p50_ms") <= ours["1"]["p50_ms"]]
    wins += [win(p, "p99_ms_c32", results, image) for p in peers
             if at(p, 32, "p99_ms") <= ours["32"]["p99_ms"]]
    return {"best_peer_c32": best, "throughput_c32_over_best_peer": ratio,
            "throughput_target_min": THROUGHPUT_TARGET,
            "throughput_target_met": ratio >= THROUGHPUT_TARGET,
            "p50_c1_below_every_peer": all(ours["1"]["p50_ms"] < at(p, 1, "p50_ms") for p in peers),
            "p99_c32_below_every_peer": all(ours["32"]["p99_ms"] < at(p, 32, "p99_ms")
                                            for p in peers),
            "peer_wins": wins}


def memory_target(rss: dict[str, int | None], model_bytes: int) -> dict[str, Any]:
    """dermserve's RSS at the end against the leanest peer's plus the model's own size."""
    peers = {name: value for name, value in rss.items() if name != DERMSERVE and value}
    best = min(peers, key=lambda name: peers[name])
    ours = rss[DERMSERVE] or 0
    return {"dermserve_rss_bytes": ours, "best_peer": best, "best_peer_rss_bytes": peers[best],
            "model_bytes": model_bytes, "met": ours <= peers[best] + model_bytes}


def started_peers(stack: contextlib.ExitStack, names: Sequence[str], target: harness.Target,
                  workdir: Path, errors: dict[str, str]) -> list[Server]:
    """Each peer started, or its error in `errors`: one failed peer must not cost the run."""
    servers = []
    for name in names:
        try:
            peer = stack.enter_context(launch.running_peer(name, target.version_dir,
                                                           target.model_name, workdir))
        except (OSError, RuntimeError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        servers.append(Server(peer.name, peer.label, peer.new_client, peer.probe))
    return servers


def checked(reference: Server, peers: Sequence[Server], images: dict[str, bytes],
            errors: dict[str, str]) -> tuple[list[Server], dict[str, float]]:
    """The peers that agree with dermserve, and how closely; the others' errors in `errors`."""
    agreeing, gaps = [], {}
    for peer in peers:
        try:
            gaps[peer.name] = agreement(reference, peer, images)
            agreeing.append(peer)
        except (Disagrees, OSError, RuntimeError, grpc.RpcError) as exc:
            errors[peer.name] = f"{type(exc).__name__}: {exc}"
    return agreeing, gaps


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    target = harness.find_target(args.model_base, args.model_name, args.version, args.image)
    config = ModelConfig.read(target.version_dir)
    matrix = harness.matrix_images(target.image)
    images = {name: matrix[name] for name in IMAGES}
    errors: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        # dermserve serves the benchmarked version alone, as each peer does (version_cost.py).
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-")))
        served = dataclasses.replace(target, model_base=alone(
            target.model_base, target.model_name, target.version, scratch))
        front = stack.enter_context(harness.running_front(served, list(args.server_arg)))
        ours = Server(DERMSERVE, "dermserve (this repository), gRPC Classify, micro-batching",
                      partial(clients.dermserve_client, front.channel, version=target.version,
                              labels=config.labels), launch.TreeProbe(front.probe.pid))
        peers = started_peers(stack, launch.names(args.peer), target, args.workdir, errors)
        peers, gaps = checked(ours, peers, images, errors)
        servers = [ours, *peers]
        ready = {server.name: server.probe.rss_bytes() for server in servers}
        results = figures(paired_rounds(servers, images, args.seconds, args.rounds))
        rss = {server.name: server.probe.rss_bytes() for server in servers}
    model_bytes = version_bytes(target.version_dir)
    targets: dict[str, Any] = {}
    if peers:
        targets = {"by_image": {image: image_targets(results, image) for image in IMAGES},
                   "memory": memory_target(rss, model_bytes)}
    return {"model": {"name": target.model_name, "version": target.version,
                      "description": config.description, "bytes": model_bytes},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]]},
            "seconds_per_window": args.seconds, "rounds": args.rounds,
            "server_args": list(args.server_arg),
            "servers": {s.name: s.label for s in servers}, "agreement_max_abs_diff": gaps,
            "errors": errors, "results": results, "rss_ready_bytes": ready,
            "rss_end_bytes": rss, "targets": targets}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_target_arguments(parser, image_help="a HAM10000 image to make the inputs from "
                                 "(default: a synthetic 600x450 JPEG)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="seconds per measured window")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="paired rounds")
    parser.add_argument("--peer", action="append", choices=sorted(launch.PEERS),
                        help="a peer to run (repeatable; default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("var/bench-peers"),
                        help="the peers' logs and settings")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for dermserve's server, as devtools.bench takes it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    # SIGTERM as Ctrl-C: the servers' context managers stop them, with every process they forked.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args(argv)
    result = run(args)
    harness.publish(args.out, result, report_lines(result))
