"""`python -m devtools.server_ab`: an A/B of two front settings at concurrency 1, alternated.

On a 2-core machine whose speed drifts by 10-20% over minutes, one benchmark run per setting says
little. This starts a fresh front per round, A then B then A..., waits until every version it
loads is warm, and times sequential Classify calls for a while: p50 latency and the server's CPU
per call, per round. Prints JSON.

    python -m devtools.server_ab --a=--warm-up-max-batch=1 --b= --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from devtools import bench
from devtools.ports import free_port


def one_round(target: bench.Target, server_args: list[str], seconds: float) -> dict[str, Any]:
    port = free_port()
    server = bench.start_server(target, port, 0, server_args)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            bench.wait_serving(channel, server, target)
            call = bench.grpc_client(channel, target.image, target.version)
            cpu_before = bench.process_cpu_s(server.pid) or 0.0
            latencies = bench.timed_loop(call, seconds)
            cpu = (bench.process_cpu_s(server.pid) or 0.0) - cpu_before
    finally:
        server.terminate()
        server.wait(30)
    return {"args": server_args, "calls": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            # timed_loop's warm-up calls are in the CPU too
            "server_cpu_ms_per_call": cpu * 1000 / (len(latencies) + bench.WARM_UP_CALLS)}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.server_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--image", type=Path, help="image to send (default: a 600x450 JPEG)")
    parser.add_argument("--a", default="", help="server flags of A, space-separated")
    parser.add_argument("--b", default="", help="server flags of B, space-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A then B")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per server")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = bench.find_target(args.model_base, args.model_name, None, args.image)
    rounds = [one_round(target, flags.split(), args.seconds)
              for _ in range(args.rounds) for flags in (args.a, args.b)]
    print(json.dumps({"benchmark": "server_ab_concurrency_1", "version": target.version,
                      "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
