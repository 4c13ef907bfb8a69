"""The batch worker's settings, declared once (core/config.py): each field is a flag
`--name-with-dashes` and a variable `DERMSERVE_NAME`; the flag wins.

`WorkerSettings` is the worker process's, on top of the batch domain's (`BatchApiSettings`,
batch/settings.py) and of the shared model and backend groups (core/settings.py).

Built once, by `parse_settings(argv, environ)` from `worker/__main__.py`, then passed down through
constructors. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dermserve.batch.settings import BatchApiSettings
from dermserve.core import config
from dermserve.core.config import setting
from dermserve.core.settings import ServingSettings
from dermserve.worker import defaults

PROG = "dermserve-worker"
DESCRIPTION = "Run a dermserve batch worker (RQ over Redis)."


@dataclass(frozen=True)
class WorkerSettings(ServingSettings, BatchApiSettings):
    """Settings of one batch worker process."""

    images_per_call: int = setting(
        defaults.DEFAULT_IMAGES_PER_CALL, unit="images",
        help="images per classifier call inside a chunk (the cancel flag is checked between "
             "calls)")
    pipeline_depth: int = setting(defaults.DEFAULT_PIPELINE_DEPTH, unit="calls",
                                  help="classifier calls in flight per chunk")
    classify_timeout_s: float = setting(
        defaults.DEFAULT_CLASSIFY_TIMEOUT_S,
        help="deadline of one classifier call of --images-per-call images")
    backend_retries: int = setting(
        defaults.DEFAULT_BACKEND_RETRIES, unit="retries",
        help="retries of one classifier call on UNAVAILABLE or DEADLINE_EXCEEDED")
    backoff_base_s: float = setting(defaults.DEFAULT_BACKOFF_BASE_S,
                                    help="first wait before such a retry (doubled each time)")
    backoff_cap_s: float = setting(defaults.DEFAULT_BACKOFF_CAP_S,
                                   help="longest wait before such a retry")
    lease_ttl_s: float = setting(defaults.DEFAULT_LEASE_TTL_S,
                                 help="a running chunk's lease without renewal")
    reap_interval_s: float = setting(defaults.DEFAULT_REAP_INTERVAL_S,
                                     help="scans for abandoned chunks and unfinished exports")
    reap_grace_s: float = setting(defaults.DEFAULT_REAP_GRACE_S,
                                  help="how long a new job is left alone by the reaper")
    max_chunk_attempts: int = setting(defaults.DEFAULT_MAX_CHUNK_ATTEMPTS, unit="runs",
                                      help="runs of one chunk before its images fail")
    model_ready_timeout_s: float = setting(defaults.DEFAULT_MODEL_READY_TIMEOUT_S,
                                           help="wait for a first model version at start-up")
    worker_metrics_address: str = setting(defaults.DEFAULT_WORKER_METRICS_ADDRESS,
                                          help="Prometheus exporter address")
    worker_metrics_port: int = setting(defaults.DEFAULT_WORKER_METRICS_PORT, unit="TCP port",
                                       help="Prometheus exporter port (0: off)")
    burst: bool = setting(False, help="exit once the queues are empty")
    ready_file: Path | None = setting(
        None, help="write {pid, port} here once the model answers and chunks are taken, for "
                   "the launcher that started this process (devtools/stack/launcher.py; "
                   "empty: none)")

    def with_overrides(self, **changes: Any) -> WorkerSettings:
        return replace(self, **changes)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for every setting; DERMSERVE_<FLAG> in `environ` replaces the default."""
    return config.build_parser(WorkerSettings, environ, PROG, DESCRIPTION)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerSettings:
    """Flags over environment over defaults."""
    return config.build(WorkerSettings, list(argv), environ, PROG, DESCRIPTION)


def settings_from_env(environ: Mapping[str, str]) -> WorkerSettings:
    """Settings from DERMSERVE_* variables only."""
    return config.from_environment(WorkerSettings, environ)
