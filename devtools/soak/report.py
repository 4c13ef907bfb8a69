"""The soak's report: calls by method and status code, the unary error rate outside the front's
own restart window, p50/p99 per 10 s, resident memory per process after warm-up and at the end,
the chaos events, and whether each target was met; and its plot (latency and RSS over time, the
faults marked)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devtools.soak.chaos import FRONT_RESTART, ChaosEvent
from devtools.soak.load import OK, Call, RssSample

BUCKET_S = 10.0  # seconds per latency bucket in the report and the plot
RSS_GROWTH_TARGET_MB = 100.0  # MB a process may grow from the end of warm-up to the end
UNARY = "Classify"


def calls_by_code(calls: Iterable[Call]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for call in calls:
        table[call.method][call.code] += 1
    return {method: dict(codes) for method, codes in sorted(table.items())}


def calls_split(calls: Sequence[Call], window: tuple[float, float] | None
                ) -> dict[str, dict[str, dict[str, int]]]:
    """Calls by method and code: all of them, and those outside the front's restart window."""
    return {"all": calls_by_code(calls),
            "outside_front_restart": calls_by_code(c for c in calls if not inside(c, window))}


def inside(call: Call, window: tuple[float, float] | None) -> bool:
    """Whether the call overlaps the window (a call in flight at a fault counts as inside)."""
    return window is not None and call.start_s <= window[1] and call.end_s >= window[0]


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 99])
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1)}


def unary_summary(calls: Sequence[Call], front_window: tuple[float, float] | None
                  ) -> dict[str, Any]:
    unary = [call for call in calls if call.method == UNARY]
    failed = [call for call in unary if call.code != OK]
    outside = [call for call in unary if not inside(call, front_window)]
    failed_outside = [call for call in outside if call.code != OK]
    return {
        "calls": len(unary), "failed": len(failed),
        "failed_inside_front_restart": len(failed) - len(failed_outside),
        "calls_outside_front_restart": len(outside),
        "failed_outside_front_restart": len(failed_outside),
        "failed_outside_front_restart_by_code": dict(Counter(c.code for c in failed_outside)),
        "error_rate_outside_front_restart": len(failed_outside) / max(len(outside), 1),
        "answered_by_version": {str(v): n for v, n in sorted(
            Counter(c.version for c in unary if c.code == OK).items())},
        **percentiles_ms([c.end_s - c.start_s for c in unary if c.code == OK])}


def latency_over_time(calls: Sequence[Call]) -> list[dict[str, Any]]:
    """Unary calls by the bucket they ended in: count, failures, p50 and p99 of the OK ones."""
    buckets: dict[int, list[Call]] = defaultdict(list)
    for call in calls:
        if call.method == UNARY:
            buckets[int(call.end_s // BUCKET_S)].append(call)
    return [{"t_s": index * BUCKET_S, "calls": len(bucket),
             "failed": sum(c.code != OK for c in bucket),
             **percentiles_ms([c.end_s - c.start_s for c in bucket if c.code == OK])}
            for index, bucket in sorted(buckets.items())]


def growth(first: RssSample, last: RssSample) -> dict[str, Any]:
    return {"start_s": round(first.t_s, 1), "start_mb": round(first.rss_mb, 1),
            "end_s": round(last.t_s, 1), "end_mb": round(last.rss_mb, 1),
            "growth_mb": round(last.rss_mb - first.rss_mb, 1)}


@dataclass(frozen=True)
class Lifetimes:
    """When the processes a fault touched were ready (replacements: the fault's heal) and when
    they were signalled (the faulted ones), by pid."""

    ready_s: dict[int, float]
    signalled_s: dict[int, float]

    @classmethod
    def of(cls, events: Sequence[ChaosEvent]) -> Lifetimes:
        touched = [e for e in events if e.detail.get("pid") is not None]
        return cls({int(e.detail["new_pid"]): e.recovered_s if e.recovered_s is not None
                    else 1e12 for e in touched if e.detail.get("new_pid") is not None},
                   {int(e.detail["pid"]): e.start_s or 0.0 for e in touched})


def process_growth(series: Sequence[RssSample], lives: Lifetimes,
                   warmup_s: float) -> list[dict[str, Any]]:
    """Each pid's growth from its first sample after its own warm-up to its last before a fault
    signalled it (a draining process is no measure). A process's warm-up ends `warmup_s` after it
    was ready: the soak's start for the first processes, the heal of the fault that replaced it
    for the others; a process that did not live that long is left out."""
    out = []
    for pid in dict.fromkeys(s.pid for s in series):
        since = lives.ready_s.get(pid, 0.0) + warmup_s
        until = lives.signalled_s.get(pid, float("inf"))
        own = [s for s in series if s.pid == pid]
        settled = [s for s in own if since <= s.t_s < until]
        if settled:
            out.append({"pid": pid, "first_seen_s": round(own[0].t_s, 1),
                        **growth(settled[0], settled[-1])})
    return out


def rss_summary(samples: Sequence[RssSample], lives: Lifetimes,
                warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per role (front, worker...): RSS at the first sample after warm-up and at the last, in MB
    (a role the soak restarted ends as another process, holding other model versions), and the
    growth of each of its processes after its own warm-up, which the target is checked on."""
    by_name: dict[str, list[RssSample]] = defaultdict(list)
    for sample in samples:
        by_name[sample.name].append(sample)
    summary = {}
    for name, series in sorted(by_name.items()):
        after = [s for s in series if s.t_s >= warmup_s] or series[-1:]
        summary[name] = {**growth(after[0], series[-1]),
                         "max_mb": round(max(s.rss_mb for s in series), 1),
                         "processes": process_growth(series, lives, warmup_s)}
    return summary


def front_window(events: Sequence[ChaosEvent]) -> tuple[float, float] | None:
    """From the front's SIGTERM until its clients' channel says SERVING again."""
    for event in events:
        if event.name == FRONT_RESTART and event.start_s is not None:
            return event.start_s, event.recovered_s if event.recovered_s is not None else 1e12
    return None


def rss_target_met(rss: dict[str, dict[str, Any]]) -> bool:
    return all(p["growth_mb"] < RSS_GROWTH_TARGET_MB
               for role in rss.values() for p in role["processes"])


def resummarize_rss(report: dict[str, Any]) -> dict[str, Any]:
    """The RSS summary and target again from a report's own samples and faults (a report written
    before the summary changed), the rest unchanged."""
    samples = [RssSample(**sample) for sample in report["rss_over_time"]]
    events = [ChaosEvent(**event) for event in report["chaos"]]
    rss = rss_summary(samples, Lifetimes.of(events), report["warmed_up_s"])
    targets = {**report["targets"], "rss_growth_under_100_mb_per_process": rss_target_met(rss)}
    return {**report, "rss_mb": rss, "targets": targets,
            "all_targets_met": all(targets.values())}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devtools.soak.report REPORT.json`: redo the RSS summary and the plot."""
    parser = argparse.ArgumentParser(prog="python -m devtools.soak.report",
                                     description=main.__doc__)
    parser.add_argument("report", type=Path)
    path = parser.parse_args(argv).report
    report = resummarize_rss(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, path.with_suffix(".png"))
    return 0


def build_report(calls: Sequence[Call], events: Sequence[ChaosEvent],
                 samples: Sequence[RssSample], job: dict[str, Any], warmed_up_s: float,
                 meta: dict[str, Any]) -> dict[str, Any]:
    window = front_window(events)
    unary = unary_summary(calls, window)
    rss = rss_summary(samples, Lifetimes.of(events), warmed_up_s)
    targets = {
        "no_failed_unary_outside_front_restart": unary["failed_outside_front_restart"] == 0,
        "rss_growth_under_100_mb_per_process": rss_target_met(rss),
        "batch_every_image_exactly_once": bool(job.get("every_image_exactly_once")),
        "every_fault_recovered": all(e.recovered_s is not None for e in events)}
    return {**meta, "warmed_up_s": warmed_up_s, "front_restart_window_s": window,
            "calls": calls_split(calls, window), "unary": unary,
            "chaos": [vars(event) for event in events], "batch_job": job,
            "rss_mb": rss, "rss_growth_target_mb": RSS_GROWTH_TARGET_MB,
            "latency_over_time": latency_over_time(calls),
            "rss_over_time": [vars(sample) for sample in samples],
            "targets": targets, "all_targets_met": all(targets.values())}


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels on one time axis: unary p50/p99 per bucket, and RSS per process; each fault a
    dashed line, the front's restart window shaded."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    figure, (latency, memory) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))
    buckets = report["latency_over_time"]
    for key in ("p50_ms", "p99_ms"):  # NaN where no call succeeded: a gap, not a line across it
        latency.plot([b["t_s"] + BUCKET_S / 2 for b in buckets],
                     [np.nan if b[key] is None else b[key] for b in buckets],
                     marker=".", label=f"Classify {key[:3]}")
    latency.set_ylabel("latency (ms)")
    latency.set_yscale("log")
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sample in report["rss_over_time"]:
        series[sample["name"]].append((sample["t_s"], sample["rss_mb"]))
    for name, points in sorted(series.items()):
        memory.plot(*zip(*points, strict=True), label=name)
    memory.set_ylabel("RSS (MB)")
    memory.set_xlabel("seconds since the soak began")
    for axes in (latency, memory):
        mark_events(axes, report)
        axes.legend(loc="upper left", fontsize="small")
        axes.grid(alpha=0.3)
    figure.suptitle(f"dermserve soak: {report['duration_s']:.0f} s, {report['model']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def mark_events(axes: Any, report: dict[str, Any]) -> None:
    window = report["front_restart_window_s"]
    if window is not None:
        axes.axvspan(window[0], min(window[1], report["duration_s"]), color="red", alpha=0.1)
    for event in report["chaos"]:
        if event["start_s"] is not None:
            axes.axvline(event["start_s"], color="grey", linestyle="--", linewidth=0.8)
            axes.text(event["start_s"], 1.0, f" {event['name']}", rotation=90, fontsize=7,
                      va="top", transform=axes.get_xaxis_transform())


if __name__ == "__main__":
    sys.exit(main())
