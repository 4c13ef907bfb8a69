"""What Linux says about a process of the stack: resident memory now and at its peak, and CPU
time. The peak (VmHWM) is what a memory bomb shows: freed buffers go back to the system and the
current RSS falls again, but the pod's memory limit is hit at the peak."""

from __future__ import annotations

import os
from pathlib import Path

MB = 1024.0  # /proc gives kB
GROWTH_LIMIT_MB = 200.0
"""MB a process's RSS may grow by over the whole run, and its peak over one memory attack
(issue 11's target; full-size decodes of eight 40 MP JPEGs once added 2.2 GB)."""


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / MB
    return 0.0


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def peak_mb(pid: int) -> float:
    """The highest RSS since the last `reset_peak` (or the start)."""
    return status_mb(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Make the current RSS the peak (writing 5 to clear_refs, Linux 4.0+; same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
