"""How the TensorFlow processes (the front, the worker) end once they have stopped cleanly.

After `serve` returns, everything of ours is closed (the gRPC server drained, the backend and
the exporters shut down, Redis connections closed), but the interpreter's exit then tears down
TensorFlow's and gRPC's C++ runtimes: an idle front on port 0, sent SIGTERM on the 2-core dev
machine, logged "stopped" 0.03 s later and was gone only 5.9 s later, with no Python frame left
(faulthandler) during the wait. That made an idle `make run` miss its 5 s stop. So the process
flushes its logs and standard streams and leaves with os._exit."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(status: int) -> NoReturn:
    """Flush logging and the standard streams, then end the process with `status`."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
