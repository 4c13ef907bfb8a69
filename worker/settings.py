"""The batch system's settings, declared once (core/config.py): each field is a flag
`--name-with-dashes` and a variable `DERMSERVE_NAME`; the flag wins.

- `RedisSettings`: how to reach Redis (the front's BatchJobs API and the workers);
- `BatchApiSettings`: what the BatchJobs API and the workers must agree on (Redis, key prefix,
  queues, input roots, output directory, job limits); the front's Settings inherits it too;
- `WorkerSettings`: the worker process, on top of them and of the shared model and backend
  groups (core/settings.py).

Built once, by `parse_settings(argv, environ)` from `worker/__main__.py`, then passed down through
constructors. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core import config
from core.config import setting
from core.settings import ModelSettings, ServingSettings
from worker import defaults

PROG = "dermserve-worker"
DESCRIPTION = "Run a dermserve batch worker (RQ over Redis)."


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to authenticate to it."""

    # secret: a URL may carry a password (prefer --redis-password-file).
    redis_url: str = setting(defaults.DEFAULT_REDIS_URL, secret=True,
                             help="Redis URL, redis:// or rediss:// (TLS)")
    redis_password_file: str = setting(
        "", help="file holding Redis' password, re-read for each new connection (empty: none)")
    redis_ca_cert: str = setting(
        "", help="CA (PEM) of Redis' certificate, for a rediss:// URL (empty: system roots)")
    redis_socket_timeout_s: float = setting(
        defaults.DEFAULT_REDIS_SOCKET_TIMEOUT_S,
        help="how long one Redis command may take before the connection counts as dead")
    redis_retries: int = setting(defaults.DEFAULT_REDIS_RETRIES, unit="attempts",
                                 help="attempts per Redis command on a dropped connection")


@dataclass(frozen=True)
class BatchApiSettings(RedisSettings, ModelSettings):
    """What the BatchJobs API (in the front) and the workers must agree on."""

    key_prefix: str = setting(defaults.DEFAULT_KEY_PREFIX, help="prefix of every Redis key")
    queue_name: str = setting(defaults.DEFAULT_QUEUE_NAME,
                              help="rq queue names are this plus -high, -normal, -low")
    input_roots: tuple[Path, ...] = setting(
        (), help="folders that jobs may reference, separated by ':' (empty: none)")
    batch_output_dir: Path = setting(Path(defaults.DEFAULT_OUTPUT_DIR),
                                     help="per-job directories: inline images, results, exports")
    chunk_size: int = setting(defaults.DEFAULT_CHUNK_SIZE, unit="images", help="images per chunk")
    max_images_per_job: int = setting(defaults.DEFAULT_MAX_IMAGES_PER_JOB, unit="images",
                                      help="images one job may hold")
    max_inline_images: int = setting(defaults.DEFAULT_MAX_INLINE_IMAGES, unit="images",
                                     help="images sent inside one SubmitBatchJob request")
    max_inline_bytes: int = setting(defaults.DEFAULT_MAX_INLINE_BYTES,
                                    help="inline images in one request, all together")
    max_manifest_bytes: int = setting(defaults.DEFAULT_MAX_MANIFEST_BYTES,
                                      help="size of a manifest CSV")
    job_ttl_s: int = setting(defaults.DEFAULT_JOB_TTL_S, help="how long a finished job stays")
    active_job_ttl_s: int = setting(defaults.DEFAULT_ACTIVE_JOB_TTL_S,
                                    help="safety net: the longest any job's keys live")
    chunk_timeout_s: int = setting(defaults.DEFAULT_CHUNK_TIMEOUT_S,
                                   help="rq kills a chunk stuck this long")
    watch_interval_s: float = setting(defaults.DEFAULT_WATCH_INTERVAL_S,
                                      help="progress polls of a WatchBatchJob stream")


@dataclass(frozen=True)
class WorkerSettings(ServingSettings, BatchApiSettings):
    """Settings of one batch worker process."""

    images_per_call: int = setting(
        defaults.DEFAULT_IMAGES_PER_CALL, unit="images", aliases=("--batch-size",),
        env_aliases=("DERMSERVE_BATCH_SIZE",),
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
                   "the launcher that started this process (devtools/stack.py; empty: none)")
    test_hold_first_chunk: bool = setting(
        False, help="tests only: hold the first chunk claimed until released (worker/hold.py)")

    def with_overrides(self, **changes: Any) -> WorkerSettings:
        return replace(self, **changes)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for every setting; DERMSERVE_<FLAG> in `environ` replaces the default."""
    return config.build_parser(WorkerSettings, environ, PROG, DESCRIPTION)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerSettings:
    """Flags over environment over defaults."""
    settings = config.build(WorkerSettings, list(argv), environ, PROG, DESCRIPTION)
    if "--backend-timeout-s" in " ".join(argv) or "DERMSERVE_BACKEND_TIMEOUT_S" in environ:
        # Until this release the worker read it as the deadline of a chunk's classifier calls.
        config.log.warning("--backend-timeout-s caps one backend call, as in the front; a "
                           "chunk's classifier calls take --classify-timeout-s")
    return settings


def settings_from_env(environ: Mapping[str, str]) -> WorkerSettings:
    """Settings from DERMSERVE_* variables only."""
    return config.from_environment(WorkerSettings, environ)
