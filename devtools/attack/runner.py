"""Run the hostile corpus against a fresh stack and summarise: attempts, outcomes by status code
and the reasons given per family, the front's and the worker's RSS before, after and at their
peak, any INTERNAL (seen by a client, or counted by the server), crashes, what the logs show, and
the p99 of unary Classify calls that a probe makes while the abuse runs.

Verdict (`passed`): no INTERNAL, no crash, no failed promise (devtools/attack/record.py), RSS growth
under RSS_GROWTH_LIMIT_MB per process, no forged or oversized log line, no ERROR logged, every probe
call answered, and the timing promises: unary p99 under P99_LIMIT_S and CPU bombs refused fast. The
quick test (tests/devtools/test_attack_quick.py) asserts all but the timing ones, which measure the
machine as much as the server; `make attack` judges them too.
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
from devtools.attack import corpus, proc
from devtools.attack.calls import classify
from devtools.attack.families import FAMILIES
from devtools.attack.record import FAILED, Record, refusal
from devtools.attack.stack import Stack, start_stack

RSS_GROWTH_LIMIT_MB = proc.GROWTH_LIMIT_MB
P99_LIMIT_S = 1.0
PROBE_TIMEOUT_S = 5.0  # seconds; a probe call slower than this counts as failed
LOG_LINE_LIMIT = 16 * 1024  # characters; a request id of 1 MB once wrote a 1 MB log line
PROCESSES = ("front", "worker", "web")
PLAIN_LOGS = frozenset({"web"})  # text lines with the level as their third word, not JSON


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
                    classify(stub, image, timeout=PROBE_TIMEOUT_S)
                    self.latencies.append(time.monotonic() - started)
                except grpc.RpcError as error:
                    self.failures.append(refusal(error)[0])

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
        pids = {name: stack.pid(name) for name in PROCESSES}
        before = {name: proc.rss_mb(pid) for name, pid in pids.items()}
        for pid in pids.values():
            proc.reset_peak(pid)
        record = Record()
        with LatencyProbe(stack) as probe:
            for family in families:
                FAMILIES[family](stack, record, quick)
        crashes = stack.crashed()
        rss = {name: {"before": round(before[name], 1),
                      "after": round(proc.rss_mb(pid), 1) if pid_alive(pid) else 0.0,
                      "peak": round(proc.peak_mb(pid), 1) if pid_alive(pid) else 0.0}
               for name, pid in pids.items()}
        served = server_outcomes(stack) if not crashes else {}
    finally:
        stack.stop()
    return summarise(record, rss, crashes, served, read_logs(stack.workdir), probe, quick,
                     time.monotonic() - started)


def pid_alive(pid: int) -> bool:
    return proc.exists(pid)


def server_outcomes(stack: Stack) -> dict[str, float]:
    """The front's own count of calls by status code (dermserve_requests_total)."""
    counts: dict[str, float] = {}
    for (name, labels), value in stack.metrics().items():
        if name == "dermserve_requests_total":
            code = dict(labels)["code"]
            counts[code] = counts.get(code, 0.0) + value
    return counts


def read_logs(workdir: Path) -> dict[str, dict[str, Any]]:
    """Per process: the longest line, lines that begin with a forged entry, and ERROR entries."""
    found = {}
    for name in PROCESSES:
        lines = (workdir / f"{name}.log").read_text(errors="replace").splitlines()
        levels = Counter(entry.get("level") for entry in map(json_entry, lines) if entry)
        if name in PLAIN_LOGS:
            levels.update(line.split(" ", 3)[2] for line in lines if line.count(" ") >= 3)
        found[name] = {
            "lines": len(lines),
            "longest_line": max(map(len, lines), default=0),
            "forged_lines": sum(corpus.FORGED_LOG_LINE in line and not line.startswith("{")
                                for line in lines),
            "errors": levels["ERROR"] + levels["CRITICAL"],
        }
    return found


def json_entry(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None  # TensorFlow's and gRPC's own stderr lines
    try:
        entry: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    return entry


def summarise(record: Record, rss: dict[str, dict[str, float]], crashes: list[str],
              served: dict[str, float], logs: dict[str, dict[str, Any]], probe: LatencyProbe,
              quick: bool, elapsed_s: float) -> dict[str, Any]:
    families = {name: {"attempts": sum(counts.values()), "outcomes": dict(counts),
                       "reasons": dict(record.reasons.get(name, {})),
                       "measures": record.measures.get(name, {}),
                       "internal": [a for a in record.internal if a.startswith(name + "/")]}
                for name, counts in record.outcomes.items()}
    p99 = probe.p99()
    failures = [
        *(f"INTERNAL: {attempt}" for attempt in record.internal),
        *(f"the front counted {served[code]:.0f} {code}" for code in sorted(FAILED)
          if served.get(code)),
        *crashes,
        *(f"{name} RSS grew {mb['after'] - mb['before']:.0f} MB" for name, mb in rss.items()
          if mb["after"] - mb["before"] >= RSS_GROWTH_LIMIT_MB),
        *record.violations,
        *(f"{name} log: {what}" for name, seen in logs.items() for what in log_faults(seen)),
        *([f"authorised Classify failed during the abuse: {dict(Counter(probe.failures))}"]
          if probe.failures else []),
    ]
    timing = [*record.timing, *([f"unary Classify p99 {p99:.3f} s (limit {P99_LIMIT_S} s)"]
                                if p99 is None or p99 >= P99_LIMIT_S else [])]
    return {
        "mode": "quick" if quick else "full",
        "elapsed_s": round(elapsed_s, 1),
        "attempts": sum(f["attempts"] for f in families.values()),
        "families": families,
        "rss_mb": rss,
        "crashes": crashes,
        "server_outcomes": served,
        "logs": logs,
        "classify_probe": {"calls": len(probe.latencies) + len(probe.failures),
                           "failures": dict(Counter(probe.failures)),
                           "p99_s": round(p99, 3) if p99 is not None else None},
        "failures": failures,
        "timing_failures": timing,
        "passed": not failures and not timing,
    }


def log_faults(seen: dict[str, Any]) -> list[str]:
    return [*([f"{seen['forged_lines']} forged lines"] if seen["forged_lines"] else []),
            *([f"a {seen['longest_line']}-character line"]
              if seen["longest_line"] >= LOG_LINE_LIMIT else []),
            *([f"{seen['errors']} ERROR entries"] if seen["errors"] else [])]


def write_summary(summary: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
