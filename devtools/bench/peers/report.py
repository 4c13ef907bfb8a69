"""The peers run's figures as Markdown (docs/performance.md's table is this output): one row per
server, image and concurrency, the memory at the end, the targets, and where a peer wins."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


def figure_rows(result: dict[str, Any]) -> list[str]:
    rows = ["| server | image | clients | p50 ms | p99 ms | calls/s | server CPU ms/call |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for server, by_image in result["results"].items():
        for image, by_c in by_image.items():
            for concurrency, step in by_c.items():
                rows.append(f"| {server} | {image} | {concurrency} | {step['p50_ms']:.1f} | "
                            f"{step['p99_ms']:.1f} | {step['calls_per_s']:.1f} | "
                            f"{step.get('server_cpu_ms_per_call', float('nan')):.1f} |")
    return rows


def memory_rows(result: dict[str, Any]) -> list[str]:
    """Each server's RSS once ready and at the end (runs before the ready figure: a dash)."""
    ready = result.get("rss_ready_bytes", {})

    def mib(value: int | None) -> str:
        return "-" if value is None else f"{value / MIB:.0f}"

    return ["| server | RSS ready, MiB | RSS at the end, MiB |", "|---|---:|---:|",
            *(f"| {name} | {mib(ready.get(name))} | {mib(value)} |"
              for name, value in result["rss_end_bytes"].items())]


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def target_lines(result: dict[str, Any]) -> list[str]:
    targets = result["targets"]
    if not targets:
        return ["no peer was timed: no targets"]
    lines = []
    for image, judged in targets["by_image"].items():
        lines.append(f"- {image}: calls/s at 32 {judged['throughput_c32_over_best_peer']:.2f}x "
                     f"the best peer's ({judged['best_peer_c32']}), target >= "
                     f"{judged['throughput_target_min']}: {met(judged['throughput_target_met'])};"
                     f" p50 at 1 below every peer's: {met(judged['p50_c1_below_every_peer'])};"
                     f" p99 at 32 below every peer's: {met(judged['p99_c32_below_every_peer'])}")
        lines.extend(win_line(w) for w in judged["peer_wins"])
    memory = targets["memory"]
    lines.append(f"- RSS: dermserve {memory['dermserve_rss_bytes'] / MIB:.0f} MiB against "
                 f"{memory['best_peer']}'s {memory['best_peer_rss_bytes'] / MIB:.0f} MiB + the "
                 f"model's {memory['model_bytes'] / MIB:.0f} MiB: {met(memory['met'])}")
    return lines


def win_line(won: dict[str, Any]) -> str:
    peer, ours = won["peer_why"], won["dermserve_why"]
    return (f"  - {won['peer']} wins {won['metric']}: at 1 client it keeps "
            f"{peer['cores_per_call_c1']:.2f} cores busy per call "
            f"({peer['server_cpu_ms_per_call_c1']:.1f} CPU ms), dermserve "
            f"{ours['cores_per_call_c1']:.2f} ({ours['server_cpu_ms_per_call_c1']:.1f}); "
            f"CPU ms per call at 32: {peer['server_cpu_ms_per_call_c32']:.1f}, dermserve "
            f"{ours['server_cpu_ms_per_call_c32']:.1f}")


def report_lines(result: dict[str, Any]) -> list[str]:
    load = result["machine"]["load_average_1m_before_after"]
    header = [f"{result['rounds']} paired rounds of {result['seconds_per_window']:.0f} s windows; "
              f"load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after; "
              f"{result['machine']['cpus']} CPUs",
              *(f"{name}: {label}" for name, label in result["servers"].items()),
              *(f"agreement with dermserve, {name}: max |difference| {gap:.1e}"
                for name, gap in result["agreement_max_abs_diff"].items()),
              *(f"{name} FAILED: {error}" for name, error in result["errors"].items())]
    return [*header, "", *figure_rows(result), "", *memory_rows(result), "",
            *target_lines(result)]
