"""devtools/proc.py against real processes: this one, a child that is stopped, and a child that
has exited but is not yet reaped (a zombie)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from devtools import proc

GONE_PID = 2 ** 22 + 1  # above Linux's largest pid


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping child Python process, killed and reaped after the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def test_thread_cpu_reads_this_process_and_nothing_for_a_process_that_is_gone() -> None:
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # spend some CPU to find
        pass
    by_name = proc.thread_cpu_s(os.getpid())
    total = proc.cpu_s(os.getpid())
    assert total is not None and by_name
    assert 0.0 < sum(by_name.values()) <= total + 0.05  # clock ticks round each thread
    assert proc.thread_cpu_s(GONE_PID) == {} and proc.cpu_s(GONE_PID) is None


def test_the_peak_holds_what_was_freed_until_it_is_reset() -> None:
    pid = os.getpid()
    proc.reset_peak(pid)
    before = proc.rss_bytes(pid)
    block = bytearray(64 * 2 ** 20)  # touched: resident
    del block
    peak = proc.peak_bytes(pid)
    assert before is not None and peak is not None and peak >= before + 60 * 2 ** 20
    proc.reset_peak(pid)
    assert (proc.peak_bytes(pid) or 0) < peak
    assert proc.rss_bytes(GONE_PID) is None and proc.peak_bytes(GONE_PID) is None


def test_a_stopped_child_is_running_with_all_threads_stopped(
        child: subprocess.Popen[bytes]) -> None:
    assert proc.command_line(child.pid) == [sys.executable, "-c", "import time; time.sleep(600)"]
    assert proc.is_running(child.pid) and not proc.all_threads_stopped(child.pid)
    os.kill(child.pid, signal.SIGSTOP)
    while not proc.all_threads_stopped(child.pid):  # the kernel sets it; no time is assumed
        time.sleep(0.01)
    assert proc.is_running(child.pid)
    os.kill(child.pid, signal.SIGCONT)


def test_an_unreaped_child_exists_but_has_stopped(child: subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped: a zombie
    assert proc.exists(child.pid) and not proc.is_running(child.pid)
    assert not proc.exists(GONE_PID) and proc.command_line(GONE_PID) is None
