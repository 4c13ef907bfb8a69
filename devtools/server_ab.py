"""`python -m devtools.server_ab`: an A/B of two front settings at one concurrency, alternated.

On a 2-core machine whose speed drifts by 10-20% over minutes, one benchmark run per setting says
little. This starts a fresh front per round, A then B then A..., waits until every version it
loads is warm, and times Classify calls from `--concurrency` clients for a while: p50 latency,
calls/s and the server's CPU per call (which other work on the machine moves much less than
calls/s), per round. Prints JSON.

    python -m devtools.server_ab --a=--warm-up-max-batch=1 --b= --rounds 3
    python -m devtools.server_ab --a=--batch-workers=1 --b=--batch-workers=2 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools import bench


def one_round(target: bench.Target, server_args: list[str], seconds: float,
              concurrency: int) -> dict[str, Any]:
    with bench.running_front(target, server_args) as front:
        window = front.window(target, target.image, concurrency, seconds)
    return {"args": server_args, **bench.pooled([window])}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.server_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--image", type=Path, help="image to send (default: a 600x450 JPEG)")
    parser.add_argument("--a", default="", help="server flags of A, space-separated")
    parser.add_argument("--b", default="", help="server flags of B, space-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A then B")
    parser.add_argument("--concurrency", type=int, default=1, help="clients calling at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per server")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = bench.find_target(args.model_base, args.model_name, None, args.image)
    rounds = [one_round(target, flags.split(), args.seconds, args.concurrency)
              for _ in range(args.rounds) for flags in (args.a, args.b)]
    print(json.dumps({"benchmark": "server_ab", "concurrency": args.concurrency,
                      "version": target.version, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
