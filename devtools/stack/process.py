"""One way to start a dermserve program from the checkout: the front, the worker and the page as
`python -m` children of this interpreter, each with the flags every dev tool gives it (its
loopback address, the embedded backend, the model), and the environment a child gets.

The stack launcher, the benchmarks and the attack suite build their children here and add only
their own flags (TLS, tokens, log level, ready files), so a flag renamed in a program is renamed
once for all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FRONT_MODULE = "dermserve.service"
WORKER_MODULE = "dermserve.worker"
WEB_MODULE = "dermserve.web"

QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2"}
"""TensorFlow's C++ start-up notices (CUDA, oneDNN) say nothing a dev tool's user needs."""


def module_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter (the checkout's virtualenv)."""
    return [sys.executable, "-m", module, *args]


def front_command(listen: str, model_base: Path, model_name: str, *args: str,
                  metrics_port: int = 0) -> list[str]:
    """The gRPC front on `listen` over the embedded backend (metrics port 0: none)."""
    return module_command(FRONT_MODULE, "--listen", listen, "--metrics-port", str(metrics_port),
                          "--backend", "embedded", "--model-base", str(model_base),
                          "--model-name", model_name, *args)


def worker_command(model_base: Path, model_name: str, *args: str, metrics_port: int = 0,
                   module: str = WORKER_MODULE) -> list[str]:
    """A batch worker (`module`: a test's own entry, such as tests.worker.hold, may stand in)."""
    return module_command(module, "--model-base", str(model_base), "--model-name", model_name,
                          "--worker-metrics-port", str(metrics_port), *args)


def web_command(listen: str, target: str, *args: str) -> list[str]:
    """The clinicians' page on `listen`, a client of the front at `target`."""
    return module_command(WEB_MODULE, "--web-listen", listen, "--target", target, *args)


def child_environment(extra: Mapping[str, str] | None = None, *, own_settings: bool = False,
                      environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """This process's environment with TensorFlow quiet and `extra` on top. `own_settings`
    drops the caller's DERMSERVE_* variables first, for a tool whose children must run with
    exactly the settings it gives them."""
    inherited = {name: value for name, value in environ.items()
                 if not (own_settings and name.startswith("DERMSERVE_"))}
    return inherited | QUIET_TENSORFLOW | dict(extra or {})


def start(command: list[str], extra_env: Mapping[str, str] | None = None,
          **popen: Any) -> subprocess.Popen[bytes]:
    """Start `command` with `child_environment(extra_env)`; `popen` goes to Popen (stdout, cwd)."""
    return subprocess.Popen(command, env=child_environment(extra_env), **popen)
