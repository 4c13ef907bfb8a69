"""Run the hostile corpus against a fresh stack and summarise: attempts and outcomes by status
code per family, the front's and the worker's RSS before and after, any INTERNAL or crash, and
the p99 of unary Classify calls made by a probe while the abuse runs.

Verdict (`passed`): no INTERNAL, no crash, and RSS growth under RSS_GROWTH_LIMIT_MB per process.
The p99 is reported, not judged: on a shared 2-core machine it measures the machine too.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from tools.attack import corpus
from tools.attack.families import FAMILIES, Record, classify
from tools.attack.stack import Stack, start_stack

RSS_GROWTH_LIMIT_MB = 200.0
PROBE_TIMEOUT_S = 5.0  # seconds; a probe call slower than this counts as failed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class LatencyProbe:
    """Unary Classify calls one after another until stopped; their latencies in seconds."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S * 2)

    def _run(self) -> None:
        image = corpus.good_jpeg()
        with self.stack.channel() as channel:
            stub = pb_grpc.LesionClassifierStub(channel)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    classify(stub, image)
                    self.latencies.append(time.monotonic() - started)
                except grpc.RpcError as error:
                    self.failures.append(error.code().name)

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run_suite(workdir: Path, quick: bool, families: Iterable[str] = tuple(FAMILIES)
              ) -> dict[str, Any]:
    started = time.monotonic()
    stack = start_stack(workdir)
    try:
        before = {name: rss_mb(stack.pid(name)) for name in ("front", "worker")}
        record = Record()
        with LatencyProbe(stack) as probe:
            for family in families:
                FAMILIES[family](stack, record, quick)
        crashes = stack.crashed()
        after = {name: rss_mb(stack.pid(name)) for name in before if stack.pid(name)}
    finally:
        stack.stop()
    return summarise(record, before, after, crashes, probe, quick, time.monotonic() - started)


def summarise(record: Record, before: dict[str, float], after: dict[str, float],
              crashes: list[str], probe: LatencyProbe, quick: bool,
              elapsed_s: float) -> dict[str, Any]:
    growth = {name: after.get(name, 0.0) - before[name] for name in before}
    families = {name: {"attempts": sum(counts.values()), "outcomes": dict(counts),
                       "internal": [a for a in record.internal if a.startswith(name + "/")]}
                for name, counts in record.outcomes.items()}
    failures = [f"INTERNAL: {attempt}" for attempt in record.internal] + crashes + [
        f"{name} RSS grew {mb:.0f} MB" for name, mb in growth.items()
        if mb >= RSS_GROWTH_LIMIT_MB]
    p99 = probe.p99()
    return {
        "mode": "quick" if quick else "full",
        "elapsed_s": round(elapsed_s, 1),
        "attempts": sum(f["attempts"] for f in families.values()),
        "families": families,
        "rss_mb": {name: {"before": round(before[name], 1), "after": round(after.get(name, 0), 1)}
                   for name in before},
        "crashes": crashes,
        "classify_probe": {"calls": len(probe.latencies) + len(probe.failures),
                           "failures": dict(Counter(probe.failures)),
                           "p99_s": round(p99, 3) if p99 is not None else None},
        "failures": failures,
        "passed": not failures,
    }


def write_summary(summary: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
