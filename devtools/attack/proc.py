"""The attack suite's readings of a stack process, in its units (MiB, as the summary reports
them), over devtools/proc.py. The peak (VmHWM) is what a memory bomb shows: freed buffers go back
to the system and the current RSS falls again, but the pod's memory limit is hit at the peak."""

from __future__ import annotations

from devtools import proc as linux
from devtools.proc import exists, reset_peak

__all__ = ["GROWTH_LIMIT_MB", "cpu_s", "exists", "peak_mb", "reset_peak", "rss_mb"]

MIB = 2.0 ** 20
GROWTH_LIMIT_MB = 200.0
"""MB a process's RSS may grow by over the whole run, and its peak over one memory attack
(issue 11's target; full-size decodes of eight 40 MP JPEGs once added 2.2 GB)."""


def rss_mb(pid: int) -> float:
    return (linux.rss_bytes(pid) or 0) / MIB


def peak_mb(pid: int) -> float:
    """The highest RSS since the last `reset_peak` (or the start)."""
    return (linux.peak_bytes(pid) or 0) / MIB


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    return linux.cpu_s(pid) or 0.0
