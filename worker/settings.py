"""WorkerSettings: every knob of the worker and of the BatchJobs API, in one frozen object.

Built once, by `parse_settings(argv, environ)` from `worker/__main__.py` (or by the front service
with `settings_from_env`), then passed down through constructors. Each field `name` is set by the
flag `--name-with-dashes` or the variable `DERMSERVE_NAME`; the flag wins. Nothing here reads the
environment at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core import defaults as core_defaults
from core.errors import InvalidRequest
from core.validation import ImageLimits
from worker import defaults


def _paths(value: str) -> tuple[Path, ...]:
    """A list of directories separated by os.pathsep (':'), as in PATH."""
    return tuple(Path(part) for part in value.split(os.pathsep) if part)


@dataclass(frozen=True)
class WorkerSettings:
    """Settings of the batch worker and the BatchJobs API (they must agree on most of them)."""

    # repr=False: a URL may carry a password (prefer --redis-password-file).
    redis_url: str = field(default=defaults.DEFAULT_REDIS_URL, repr=False)
    redis_password_file: str = field(default="", metadata={
        "help": "file holding Redis' password, re-read for each new connection (empty: none)"})
    redis_ca_cert: str = field(default="", metadata={
        "help": "CA (PEM) of Redis' certificate, for a rediss:// URL (empty: system roots)"})
    key_prefix: str = defaults.DEFAULT_KEY_PREFIX
    queue_name: str = defaults.DEFAULT_QUEUE_NAME
    input_roots: tuple[Path, ...] = ()
    batch_output_dir: Path = Path(defaults.DEFAULT_OUTPUT_DIR)
    chunk_size: int = defaults.DEFAULT_CHUNK_SIZE
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    pipeline_depth: int = defaults.DEFAULT_PIPELINE_DEPTH
    max_images_per_job: int = defaults.DEFAULT_MAX_IMAGES_PER_JOB
    max_inline_images: int = defaults.DEFAULT_MAX_INLINE_IMAGES
    max_inline_bytes: int = defaults.DEFAULT_MAX_INLINE_BYTES
    max_manifest_bytes: int = defaults.DEFAULT_MAX_MANIFEST_BYTES
    job_ttl_s: int = defaults.DEFAULT_JOB_TTL_S
    active_job_ttl_s: int = defaults.DEFAULT_ACTIVE_JOB_TTL_S
    lease_ttl_s: float = defaults.DEFAULT_LEASE_TTL_S
    reap_interval_s: float = defaults.DEFAULT_REAP_INTERVAL_S
    reap_grace_s: float = defaults.DEFAULT_REAP_GRACE_S
    max_chunk_attempts: int = defaults.DEFAULT_MAX_CHUNK_ATTEMPTS
    chunk_timeout_s: int = defaults.DEFAULT_CHUNK_TIMEOUT_S
    backend_retries: int = defaults.DEFAULT_BACKEND_RETRIES
    backoff_base_s: float = defaults.DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = defaults.DEFAULT_BACKOFF_CAP_S
    backend_timeout_s: float = defaults.DEFAULT_BACKEND_TIMEOUT_S
    watch_interval_s: float = defaults.DEFAULT_WATCH_INTERVAL_S
    redis_socket_timeout_s: float = defaults.DEFAULT_REDIS_SOCKET_TIMEOUT_S
    redis_retries: int = defaults.DEFAULT_REDIS_RETRIES
    model_base: Path = Path(core_defaults.DEFAULT_MODEL_BASE)
    model_name: str = core_defaults.DEFAULT_MODEL_NAME
    backend: str = core_defaults.DEFAULT_BACKEND
    tfserving_target: str = core_defaults.DEFAULT_TFSERVING_TARGET
    tfserving_ca: str = field(default="", metadata={
        "help": "CA (PEM) of TF Serving's certificate; enables TLS to it (empty: plaintext)"})
    poll_interval_s: float = core_defaults.DEFAULT_POLL_INTERVAL_S
    model_ready_timeout_s: float = defaults.DEFAULT_MODEL_READY_TIMEOUT_S
    min_confidence_floor: float = core_defaults.DEFAULT_MIN_CONFIDENCE_FLOOR
    default_version_label: str = field(default="", metadata={
        "help": "label answering jobs that pin nothing, e.g. stable (empty: the latest)"})
    max_image_bytes: int = core_defaults.DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = core_defaults.DEFAULT_MAX_IMAGE_PIXELS
    min_image_side: int = core_defaults.DEFAULT_MIN_IMAGE_SIDE
    max_aspect_ratio: float = core_defaults.DEFAULT_MAX_ASPECT_RATIO
    decode_pixel_budget: int = core_defaults.DEFAULT_DECODE_PIXEL_BUDGET
    worker_metrics_address: str = defaults.DEFAULT_WORKER_METRICS_ADDRESS
    worker_metrics_port: int = defaults.DEFAULT_WORKER_METRICS_PORT
    burst: bool = field(default=False, metadata={"help": "exit once the queues are empty"})
    test_hold_first_chunk: bool = field(default=False, metadata={
        "help": "tests only: hold the first chunk claimed until released (worker/hold.py)"})

    @property
    def image_limits(self) -> ImageLimits:
        """The same image checks as Classify, with this deployment's byte and pixel bounds."""
        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.min_image_side,
                           self.max_aspect_ratio)

    def with_overrides(self, **changes: Any) -> WorkerSettings:
        return replace(self, **changes)


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _converter(default: object) -> Callable[[str], Any]:
    """How a flag or variable's text becomes the field's type, judged by its default."""
    if isinstance(default, bool):
        return _bool
    if isinstance(default, tuple):
        return _paths
    if isinstance(default, Path):
        return Path
    return type(default)


def env_name(name: str) -> str:
    return "DERMSERVE_" + name.upper()


def settings_from_env(environ: Mapping[str, str], base: WorkerSettings | None = None
                      ) -> WorkerSettings:
    """Settings from DERMSERVE_* variables only (the front service uses this)."""
    base = base or WorkerSettings()
    changes: dict[str, Any] = {}
    for item in fields(WorkerSettings):
        text = environ.get(env_name(item.name))
        if text is not None:
            changes[item.name] = _convert(item.name, text, getattr(base, item.name))
    return replace(base, **changes)


def _convert(name: str, text: str, default: object) -> Any:
    try:
        return _converter(default)(text)
    except ValueError as exc:
        raise InvalidRequest(f"setting {name}: cannot read {text!r}") from exc


def build_parser(base: WorkerSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermserve-worker",
        description="Run a dermserve batch worker (RQ over Redis). Every flag also reads "
                    "DERMSERVE_<NAME> from the environment.")
    for item in fields(WorkerSettings):
        default = getattr(base, item.name)
        flag = "--" + item.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default,
                                help=item.metadata.get("help", ""))
            continue
        shown = os.pathsep.join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(flag, type=_converter(default), default=default,
                            help=f"{item.metadata.get('help', '')} "
                                 f"[{env_name(item.name)}; default {shown}]".lstrip())
    return parser


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerSettings:
    """Flags over environment over defaults."""
    base = settings_from_env(environ)
    namespace = build_parser(base).parse_args(list(argv))
    return replace(base, **vars(namespace))
