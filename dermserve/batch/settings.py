"""The batch domain's settings, declared once (core/config.py): each field is a flag
`--name-with-dashes` and a variable `DERMSERVE_NAME`; the flag wins.

- `RedisSettings`: how to reach Redis (the front's BatchJobs API and the workers);
- `BatchApiSettings`: what the BatchJobs API and the workers must agree on (Redis, key prefix,
  queues, input roots, output directory, job limits); the front's Settings and the worker's
  WorkerSettings (worker/settings.py) inherit it.

Nothing here reads the environment at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dermserve.batch import defaults
from dermserve.core.config import setting
from dermserve.core.settings import ModelSettings


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
