"""What `make run` shows of its children's output: every line prefixed with the process that
wrote it (`front  | ...`), and start-up noise that reads like a failure kept out of sight.

Hidden (logged at debug level on the stack's logger, so `--verbose` shows them):
- TensorFlow's C++ start-up lines about CUDA and oneDNN on a machine without a GPU
  (`failed call to cuInit`, `Could not find cuda drivers`, `oneDNN custom operations are on`)
  and absl's "All log messages before absl::InitializeLog()" preamble: they come from the
  TensorFlow import in the front and the worker, before any of our logging is set up, and
  say only that the CPU is used;
- rq's start-up chatter (registries cleaned, pubsub channel subscribed), which would otherwise
  scroll the "serving" banner away, and Redis's start-up banner.
Replaced by one explaining line: Redis's memory-overcommit warning (REDIS_OVERCOMMIT_NOTE).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import IO, TextIO

log = logging.getLogger("dermserve.stack")

NAME_WIDTH = 6  # characters of the process-name column: "worker" is the longest name

TENSORFLOW_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IWE]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] .*"
    r"(cuda|CUDA|cuInit|GPU will not be used|oneDNN|TF_ENABLE_ONEDNN_OPTS|AVX|cpu_feature_guard"
    r"|rebuild TensorFlow)")
"""absl-format lines (`E0000 00:00:1796583907.374688 7776 cuda_platform.cc:52] ...`) about the
GPU or the CPU's instruction sets; a line of that shape about anything else is shown."""

RQ_START_UP = re.compile(r"rq\.worker .*(cleaning registries|cleaning group registries"
                         r"|subscribing to channel|started with PID|\*\*\* Listening on)")

REDIS_START_UP = re.compile(r"oO0OoO0OoO0Oo Redis is starting|# Redis version="
                            r"|# Configuration loaded|# Server initialized")
"""Redis logs these at warning level (--loglevel warning keeps its other start-up notices out)."""

REDIS_OVERCOMMIT = re.compile(r"WARNING Memory overcommit must be enabled")
REDIS_OVERCOMMIT_NOTE = ("the kernel's vm.overcommit_memory is 0, so Redis warns that a fork "
                         "(its AOF rewrite) may fail under memory pressure. Harmless for this "
                         "local stack: a failed rewrite keeps the AOF as it is and loses no job. "
                         "On a server, set vm.overcommit_memory=1.")


def hidden(line: str) -> bool:
    """Whether `line` is start-up noise (see the module docstring)."""
    return any(pattern.search(line) for pattern in (TENSORFLOW_NOISE, RQ_START_UP,
                                                    REDIS_START_UP))


def shown_as(line: str) -> str | None:
    """The text to show for one line of a child's output, or None to hide it."""
    if REDIS_OVERCOMMIT.search(line):
        return REDIS_OVERCOMMIT_NOTE
    if hidden(line):
        return None
    return line


class Console:
    """Writes children's lines, prefixed, to `out`; remembers each child's last shown line (a
    crash-loop banner quotes it as the likely cause)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.last_line: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, name: str, line: str) -> None:
        text = shown_as(line)
        if text is None:
            log.debug("%s (hidden): %s", name, line)
            return
        with self._lock:
            self.last_line[name] = text
            self.out.write(f"{name:<{NAME_WIDTH}} | {text}\n")
            self.out.flush()

    def follow(self, name: str, stream: IO[bytes], done: Callable[[], None] | None = None
               ) -> threading.Thread:
        """A thread copying `stream` (a child's stdout and stderr) line by line until EOF."""
        def copy() -> None:
            for raw in stream:
                self.write(name, raw.decode("utf-8", "replace").rstrip("\r\n"))
            stream.close()
            if done is not None:
                done()

        thread = threading.Thread(target=copy, name=f"output-{name}", daemon=True)
        thread.start()
        return thread


class PrefixFormatter(logging.Formatter):
    """The stack's own log lines, in the same column as its children's."""

    def __init__(self, name: str = "stack") -> None:
        super().__init__(f"{name:<{NAME_WIDTH}} | %(asctime)s %(message)s")
