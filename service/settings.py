"""The front service's one Settings object, built once at the entry point from flags and the
environment (flags win; every flag `--some-name` also reads `DERMSERVE_SOME_NAME`).

Nothing here runs at import time: `Settings.from_sources(argv, environ)` does the work.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import defaults as core_defaults
from core.validation import ImageLimits
from service import defaults

ENV_PREFIX = "DERMSERVE_"
BACKENDS = ("embedded", "tfserving")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class BatchSettings:
    """Dynamic micro-batching of concurrent predict calls (core/batching.py)."""

    enabled: bool = True
    max_size: int = core_defaults.DEFAULT_BATCH_MAX_SIZE
    max_wait_ms: float = core_defaults.DEFAULT_BATCH_MAX_WAIT_MS
    workers: int = core_defaults.DEFAULT_BATCH_WORKERS
    queue_limit: int = core_defaults.DEFAULT_BATCH_QUEUE_LIMIT


@dataclass(frozen=True)
class StreamSettings:
    """Limits on streaming calls, so that open streams cannot starve unary calls
    (service/streams.py)."""

    max_streams: int = defaults.DEFAULT_MAX_STREAMS  # 0: a share of the gRPC threads
    max_per_client: int = defaults.DEFAULT_MAX_STREAMS_PER_CLIENT
    max_health_watches: int = defaults.DEFAULT_MAX_HEALTH_WATCHES
    idle_timeout_s: float = defaults.DEFAULT_STREAM_IDLE_TIMEOUT_S


@dataclass(frozen=True)
class SecuritySettings:
    """Bearer tokens and TLS; all unset (off) by default, for loopback use."""

    auth_tokens_file: Path | None = None
    auth_token: str | None = field(default=None, repr=False)  # never in logs
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    reload_interval_s: float = defaults.DEFAULT_CREDENTIALS_RELOAD_INTERVAL_S

    @property
    def auth_enabled(self) -> bool:
        return self.auth_tokens_file is not None or bool(self.auth_token)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class Settings:
    """Everything the front service is configured with."""

    listen_address: str = defaults.DEFAULT_LISTEN_ADDRESS
    health_listen_address: str = ""  # off; see the --health-listen flag
    metrics_address: str = defaults.DEFAULT_METRICS_ADDRESS
    metrics_port: int = defaults.DEFAULT_METRICS_PORT
    backend: str = core_defaults.DEFAULT_BACKEND
    model_base: Path = Path(core_defaults.DEFAULT_MODEL_BASE)
    model_name: str = core_defaults.DEFAULT_MODEL_NAME
    poll_interval_s: float = core_defaults.DEFAULT_POLL_INTERVAL_S
    version_labels: Mapping[str, int] = field(default_factory=dict)
    default_version_label: str = ""  # empty: unpinned calls get the latest version
    tfserving_target: str = core_defaults.DEFAULT_TFSERVING_TARGET
    tfserving_ca: Path | None = None  # None: plaintext to TF Serving (loopback, tests)
    backend_timeout_s: float = core_defaults.DEFAULT_BACKEND_TIMEOUT_S
    backend_max_retries: int = core_defaults.DEFAULT_BACKEND_MAX_RETRIES
    limits: ImageLimits = field(default_factory=ImageLimits)
    decode_pixel_budget: int = core_defaults.DEFAULT_DECODE_PIXEL_BUDGET
    min_confidence_floor: float = core_defaults.DEFAULT_MIN_CONFIDENCE_FLOOR
    batching: BatchSettings = field(default_factory=BatchSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    grace_period_s: float = defaults.DEFAULT_GRACE_PERIOD_S
    health_interval_s: float = defaults.DEFAULT_HEALTH_INTERVAL_S
    grpc_workers: int = defaults.DEFAULT_GRPC_WORKERS
    max_concurrent_rpcs: int = defaults.DEFAULT_MAX_CONCURRENT_RPCS
    log_format: str = "text"
    log_level: str = "INFO"

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
        parser = build_parser(environ or {})
        settings = cls.from_namespace(parser.parse_args(argv))
        if settings.stream_limit >= settings.grpc_workers:
            parser.error("--max-streams must be below --grpc-workers, or streams can take every "
                         "thread and leave none for unary calls")
        return settings

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> Settings:
        return cls(
            listen_address=ns.listen, health_listen_address=ns.health_listen,
            metrics_address=ns.metrics_address,
            metrics_port=ns.metrics_port, backend=ns.backend, model_base=ns.model_base,
            model_name=ns.model_name, poll_interval_s=ns.poll_interval_s,
            version_labels=ns.version_labels, default_version_label=ns.default_version_label,
            tfserving_target=ns.tfserving_target, tfserving_ca=ns.tfserving_ca,
            backend_timeout_s=ns.backend_timeout_s, backend_max_retries=ns.backend_max_retries,
            limits=ImageLimits(ns.max_image_bytes, ns.max_image_pixels, ns.min_image_side,
                               ns.max_aspect_ratio),
            decode_pixel_budget=ns.decode_pixel_budget,
            min_confidence_floor=ns.min_confidence_floor,
            batching=BatchSettings(ns.batching == "on", ns.batch_max_size, ns.batch_max_wait_ms,
                                   ns.batch_workers, ns.batch_queue_limit),
            security=SecuritySettings(ns.auth_tokens_file, ns.auth_token or None, ns.tls_cert,
                                      ns.tls_key, ns.tls_client_ca,
                                      ns.credentials_reload_interval_s),
            streams=StreamSettings(ns.max_streams, ns.max_streams_per_client,
                                   ns.max_health_watches, ns.stream_idle_timeout_s),
            grace_period_s=ns.grace_period_s, health_interval_s=ns.health_interval_s,
            grpc_workers=ns.grpc_workers, max_concurrent_rpcs=ns.max_concurrent_rpcs,
            log_format=ns.log_format, log_level=ns.log_level)


def parse_labels(text: str) -> dict[str, int]:
    """'stable=3,canary=4' -> {'stable': 3, 'canary': 4}."""
    labels: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = item.partition("=")
        if not sep or not name or not number.isdigit():
            raise argparse.ArgumentTypeError(f"expected LABEL=VERSION, got {item!r}")
        labels[name] = int(number)
    return labels


def optional_path(text: str) -> Path | None:
    return Path(text) if text else None


OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    # flag, type, default, help
    ("listen", str, defaults.DEFAULT_LISTEN_ADDRESS, "gRPC address host:port (port 0: any)"),
    ("health-listen", str, "", "extra plaintext address serving only grpc.health.v1, for "
     "probes that cannot speak TLS (empty: off)"),
    ("metrics-address", str, defaults.DEFAULT_METRICS_ADDRESS, "Prometheus exporter address"),
    ("metrics-port", int, defaults.DEFAULT_METRICS_PORT, "Prometheus exporter port (0: off)"),
    ("backend", str, core_defaults.DEFAULT_BACKEND, "model backend: embedded or tfserving"),
    ("model-base", Path, core_defaults.DEFAULT_MODEL_BASE, "embedded: model base directory"),
    ("model-name", str, core_defaults.DEFAULT_MODEL_NAME, "model name"),
    ("poll-interval-s", float, core_defaults.DEFAULT_POLL_INTERVAL_S, "embedded: rescan period"),
    ("version-labels", parse_labels, "", "embedded: labels, e.g. stable=3,canary=4"),
    ("default-version-label", str, "", "label answering calls that pin nothing, e.g. stable "
     "(empty: the latest version)"),
    ("tfserving-target", str, core_defaults.DEFAULT_TFSERVING_TARGET, "tfserving: host:port"),
    ("tfserving-ca", optional_path, "", "tfserving: CA (PEM) of TF Serving's certificate; "
     "enables TLS to it (empty: plaintext)"),
    ("backend-timeout-s", float, core_defaults.DEFAULT_BACKEND_TIMEOUT_S, "backend call cap"),
    ("backend-max-retries", int, core_defaults.DEFAULT_BACKEND_MAX_RETRIES,
     "retries on UNAVAILABLE"),
    ("max-image-bytes", int, core_defaults.DEFAULT_MAX_IMAGE_BYTES, "encoded image limit, bytes"),
    ("max-image-pixels", int, core_defaults.DEFAULT_MAX_IMAGE_PIXELS, "pixel count limit"),
    ("min-image-side", int, core_defaults.DEFAULT_MIN_IMAGE_SIDE, "shortest side, pixels"),
    ("max-aspect-ratio", float, core_defaults.DEFAULT_MAX_ASPECT_RATIO, "long/short side limit"),
    ("decode-pixel-budget", int, core_defaults.DEFAULT_DECODE_PIXEL_BUDGET,
     "pixels decoded at once across calls (memory bound)"),
    ("min-confidence-floor", float, core_defaults.DEFAULT_MIN_CONFIDENCE_FLOOR,
     "abstain below this top probability, whatever the version says"),
    ("batching", str, "on", "micro-batching: on or off"),
    ("batch-max-size", int, core_defaults.DEFAULT_BATCH_MAX_SIZE, "images per batch"),
    ("batch-max-wait-ms", float, core_defaults.DEFAULT_BATCH_MAX_WAIT_MS, "extra wait for a batch"),
    ("batch-workers", int, core_defaults.DEFAULT_BATCH_WORKERS, "batches in flight"),
    ("batch-queue-limit", int, core_defaults.DEFAULT_BATCH_QUEUE_LIMIT, "images waiting, at most"),
    ("auth-tokens-file", optional_path, "", "bearer tokens file (see service/auth.py)"),
    ("auth-token", str, "", "one bearer token for every service (prefer the env variable)"),
    ("tls-cert", optional_path, "", "server certificate (PEM); enables TLS"),
    ("tls-key", optional_path, "", "server private key (PEM)"),
    ("tls-client-ca", optional_path, "", "CA for client certificates; enables mutual TLS"),
    ("credentials-reload-interval-s", float, defaults.DEFAULT_CREDENTIALS_RELOAD_INTERVAL_S,
     "seconds between looks at the tokens and TLS files for a rotation"),
    ("grace-period-s", float, defaults.DEFAULT_GRACE_PERIOD_S, "SIGTERM drain time"),
    ("health-interval-s", float, defaults.DEFAULT_HEALTH_INTERVAL_S, "health probe period"),
    ("grpc-workers", int, defaults.DEFAULT_GRPC_WORKERS, "gRPC handler threads"),
    ("max-concurrent-rpcs", int, defaults.DEFAULT_MAX_CONCURRENT_RPCS, "calls at once"),
    ("max-streams", int, defaults.DEFAULT_MAX_STREAMS, "streaming calls open at once, all "
     "clients together, below --grpc-workers so the rest serve unary calls (0: half of them)"),
    ("max-streams-per-client", int, defaults.DEFAULT_MAX_STREAMS_PER_CLIENT,
     "streaming calls one token, certificate or address may hold open"),
    ("max-health-watches", int, defaults.DEFAULT_MAX_HEALTH_WATCHES,
     "grpc.health.v1 Watch streams open at once"),
    ("stream-idle-timeout-s", float, defaults.DEFAULT_STREAM_IDLE_TIMEOUT_S,
     "end a stream after this long without a message either way"),
    ("log-format", str, "text", "text or json (JSON lines with request_id)"),
    ("log-level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
)
CHOICES = {"backend": BACKENDS, "log-format": LOG_FORMATS, "batching": ("on", "off"),
           "log-level": ("DEBUG", "INFO", "WARNING", "ERROR")}


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for every setting; DERMSERVE_<FLAG> in `environ` replaces the default."""
    parser = argparse.ArgumentParser(prog="dermserve-server",
                                     description="Run the dermserve gRPC front service.")
    for flag, kind, default, text in OPTIONS:
        env = ENV_PREFIX + flag.upper().replace("-", "_")
        # argparse converts string defaults with `type`, so env values are checked like flags.
        value = environ.get(env, default if isinstance(default, str) else str(default))
        parser.add_argument(f"--{flag}", type=kind, default=value, choices=CHOICES.get(flag),
                            help=f"{text} [env {env}, default {default!s}]")
    return parser
