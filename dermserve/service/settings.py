"""The front service's one Settings object, declared once (core/config.py) and built once at the
entry point from flags and the environment (flags win; every flag `--some-name` also reads
`DERMSERVE_SOME_NAME`).

It inherits the groups it shares with the worker: the model, the backend and the image checks
(core/settings.py), and Redis and the batch jobs' paths and limits (worker/settings.py), which the
BatchJobs API hosted here must agree on with the workers.

Nothing here runs at import time: `Settings.from_sources(argv, environ)` does the work.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dermserve.batch.settings import BatchApiSettings
from dermserve.core import config
from dermserve.core import defaults as core_defaults
from dermserve.core.config import group, parse_bool, setting
from dermserve.core.settings import ServingSettings
from dermserve.service import defaults

PROG = "dermserve-server"
DESCRIPTION = "Run the dermserve gRPC front service."
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BATCH_JOBS_MODES = ("auto", "on", "off")
REDIS_URL_FLAG = "--redis-url"


def on_off(value: bool) -> str:
    return "on" if value else "off"


@dataclass(frozen=True)
class BatchSettings:
    """Dynamic micro-batching of concurrent predict calls (core/batching.py)."""

    enabled: bool = setting(True, flag="batching", parse=parse_bool, show=on_off,
                            help="micro-batching: on or off")
    max_size: int = setting(core_defaults.DEFAULT_BATCH_MAX_SIZE, flag="batch-max-size",
                            unit="images", help="images per batch")
    max_wait_ms: float = setting(core_defaults.DEFAULT_BATCH_MAX_WAIT_MS,
                                 flag="batch-max-wait-ms", help="extra wait for a batch")
    workers: int = setting(core_defaults.DEFAULT_BATCH_WORKERS, flag="batch-workers",
                           unit="batches", help="batches in flight")
    queue_limit: int = setting(core_defaults.DEFAULT_BATCH_QUEUE_LIMIT, flag="batch-queue-limit",
                               unit="images", help="images waiting, at most")


@dataclass(frozen=True)
class StreamSettings:
    """Limits on streaming calls, so that open streams cannot starve unary calls
    (service/streams.py)."""

    max_streams: int = setting(
        defaults.DEFAULT_MAX_STREAMS, unit="streams",
        help="streaming calls open at once, all clients together, below --grpc-workers so the "
             "rest serve unary calls (0: half of them)")
    max_per_client: int = setting(
        defaults.DEFAULT_MAX_STREAMS_PER_CLIENT, flag="max-streams-per-client", unit="streams",
        help="streaming calls one token, certificate or address may hold open")
    max_health_watches: int = setting(defaults.DEFAULT_MAX_HEALTH_WATCHES, unit="streams",
                                      help="grpc.health.v1 Watch streams open at once")
    idle_timeout_s: float = setting(
        defaults.DEFAULT_STREAM_IDLE_TIMEOUT_S, flag="stream-idle-timeout-s",
        help="end a stream after this long without a message either way")


@dataclass(frozen=True)
class SecuritySettings:
    """Bearer tokens and TLS; all unset (off) by default, for loopback use."""

    auth_tokens_file: Path | None = setting(None, help="bearer tokens file (see service/auth.py)")
    auth_token: str | None = setting(
        None, secret=True, show=lambda _: "none",
        help="one bearer token for every service (prefer the variable)")  # never in logs
    tls_cert: Path | None = setting(None, help="server certificate (PEM); enables TLS")
    tls_key: Path | None = setting(None, help="server private key (PEM)")
    tls_client_ca: Path | None = setting(
        None, help="CA for client certificates; enables mutual TLS")
    reload_interval_s: float = setting(
        defaults.DEFAULT_CREDENTIALS_RELOAD_INTERVAL_S, flag="credentials-reload-interval-s",
        help="looks at the tokens and TLS files for a rotation")

    @property
    def auth_enabled(self) -> bool:
        return self.auth_tokens_file is not None or bool(self.auth_token)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class Settings(ServingSettings, BatchApiSettings):
    """Everything the front service is configured with."""

    listen_address: str = setting(defaults.DEFAULT_LISTEN_ADDRESS, flag="listen",
                                  help="gRPC address host:port (port 0: any)")
    health_listen_address: str = setting(
        "", flag="health-listen",
        help="extra plaintext address serving only grpc.health.v1, for probes that cannot "
             "speak TLS (empty: off)")
    metrics_address: str = setting(defaults.DEFAULT_METRICS_ADDRESS,
                                   help="Prometheus exporter address")
    metrics_port: int = setting(defaults.DEFAULT_METRICS_PORT, unit="TCP port",
                                help="Prometheus exporter port (0: off)")
    batch_jobs: str = setting(
        "auto", choices=BATCH_JOBS_MODES,
        help="host the BatchJobs API on this port (auto: when --redis-url or "
             "DERMSERVE_REDIS_URL is given)")
    batching: BatchSettings = group(BatchSettings)
    security: SecuritySettings = group(SecuritySettings)
    streams: StreamSettings = group(StreamSettings)
    grace_period_s: float = setting(defaults.DEFAULT_GRACE_PERIOD_S, help="SIGTERM drain time")
    health_interval_s: float = setting(defaults.DEFAULT_HEALTH_INTERVAL_S,
                                       help="health probe period")
    grpc_workers: int = setting(defaults.DEFAULT_GRPC_WORKERS, unit="threads",
                                help="gRPC handler threads")
    max_concurrent_rpcs: int = setting(defaults.DEFAULT_MAX_CONCURRENT_RPCS, unit="calls",
                                       help="calls at once")
    log_format: str = setting("text", choices=LOG_FORMATS,
                              help="text or json (JSON lines with request_id)")
    log_level: str = setting("INFO", choices=LOG_LEVELS, help="log level")
    ready_file: Path | None = setting(
        None, help="write {pid, port} here once SERVING, for the launcher that started this "
                   "process (devtools/stack/launcher.py; empty: none)")

    @property
    def hosts_batch_jobs(self) -> bool:
        """Whether this front serves BatchJobs ("auto" was resolved by `from_sources`)."""
        return self.batch_jobs == "on"

    @property
    def max_message_bytes(self) -> int:
        """gRPC's message limit: the image limit plus room for the other fields. Larger messages
        fail with RESOURCE_EXHAUSTED before any of our code runs."""
        return self.limits.max_bytes + core_defaults.MESSAGE_OVERHEAD_BYTES

    @property
    def stream_limit(self) -> int:
        """Streaming calls open at once: --max-streams, or a share of the gRPC threads."""
        if self.streams.max_streams > 0:
            return self.streams.max_streams
        return max(1, int(self.grpc_workers * defaults.STREAM_SHARE_OF_WORKERS))

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> Settings:
        """Parse `argv` (flags) over `environ` (DERMSERVE_* variables) over the defaults."""
        environ = environ or {}
        parser = build_parser(environ)
        settings = cls.from_namespace(parser.parse_args(argv))
        if settings.stream_limit >= settings.grpc_workers:
            parser.error("--max-streams must be below --grpc-workers, or streams can take every "
                         "thread and leave none for unary calls")
        if settings.batch_jobs == "auto":
            given = (REDIS_URL_FLAG + "=", REDIS_URL_FLAG)
            redis_given = bool(environ.get(config.ENV_PREFIX + "REDIS_URL")) or any(
                arg.startswith(given) for arg in argv or ())
            settings = replace(settings, batch_jobs="on" if redis_given else "off")
        return settings


    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Settings:
        """The settings `build_parser(...).parse_args(...)` read."""
        return config.assemble(cls, vars(namespace))


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for every setting; DERMSERVE_<FLAG> in `environ` replaces the default."""
    return config.build_parser(Settings, environ, PROG, DESCRIPTION)
