"""What Linux says about a process of the stack, in one place: resident memory now and at its
peak, CPU time (the process's and its threads' by name), its command line, whether it still runs,
whether all its threads are stopped.

psutil answers whatever it can. Three readings it has no API for stay on /proc, here alone: the
peak resident set (VmHWM) and its reset (clear_refs), which a memory bomb shows where the current
RSS has already fallen again, and thread names (TensorFlow names its pools, gRPC its engine)."""

from __future__ import annotations

from pathlib import Path

import psutil

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def rss_bytes(pid: int) -> int | None:
    """The resident set of `pid` now; None once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except GONE:
        return None


def peak_bytes(pid: int) -> int | None:
    """The highest resident set of `pid` since the last `reset_peak` (or its start)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")),
               None)
    return None if kib is None else int(kib) * 1024


def reset_peak(pid: int) -> None:
    """Make the current resident set the peak (writing 5 to clear_refs, Linux 4.0+; same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds `pid` has used; None once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except GONE:
        return None
    return float(times.user + times.system)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """User plus system CPU seconds of `pid`'s live threads, summed by thread name ({} once it is
    gone). A thread that ends takes its seconds with it."""
    try:
        threads = psutil.Process(pid).threads()
    except GONE:
        return {}
    spent: dict[str, float] = {}
    for thread in threads:
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended between the listing and the read
        spent[name] = spent.get(name, 0.0) + thread.user_time + thread.system_time
    return spent


def command_line(pid: int) -> list[str] | None:
    try:
        return list(psutil.Process(pid).cmdline())
    except GONE:
        return None


def exists(pid: int) -> bool:
    """Whether `pid` names a process, a zombie its parent has not reaped included."""
    return bool(psutil.pid_exists(pid))


def is_running(pid: int) -> bool:
    """Whether `pid` is a live process: a zombie (exited, not yet reaped) has stopped too."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped (SIGSTOP: state T, or t when traced)."""
    stopped = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
    try:
        return all(psutil.Process(thread.id).status() in stopped
                   for thread in psutil.Process(pid).threads())
    except GONE:
        return False


def descendants(pid: int) -> list[int]:
    """The live processes under `pid` (children, theirs, ...); [] once it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except GONE:
        return []


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of `pid` and its live descendants (servers that fork workers: MLServer,
    BentoML); None once `pid` is gone."""
    own = cpu_s(pid)
    if own is None:
        return None
    return own + sum(cpu_s(child) or 0.0 for child in descendants(pid))


def tree_rss_bytes(pid: int) -> int | None:
    """The resident sets of `pid` and its live descendants, summed (pages they share counted
    once per process, as each process's RSS counts them); None once `pid` is gone."""
    own = rss_bytes(pid)
    if own is None:
        return None
    return own + sum(rss_bytes(child) or 0 for child in descendants(pid))
