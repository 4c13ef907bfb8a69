"""The web server's one Settings object, declared once (core/config.py) and built once at the
entry point. The connection settings have the CLI's flags and variables (DERMSERVE_TARGET,
DERMSERVE_TOKEN, DERMSERVE_TLS_CA, ...), and the upload limit the front's
(DERMSERVE_MAX_IMAGE_BYTES), so one environment configures both alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core import config
from core import defaults as core_defaults
from core.config import setting
from service.defaults import DEFAULT_LISTEN_ADDRESS
from web import defaults

PROG = "dermserve-web"
DESCRIPTION = "Serve the clinicians' web page, a client of the dermserve gRPC front."


@dataclass(frozen=True)
class WebSettings:
    """Where the page listens, how it reaches the front, and what it accepts."""

    listen_address: str = setting(defaults.DEFAULT_WEB_LISTEN_ADDRESS, flag="web-listen",
                                  help="HTTP address host:port of the page (port 0: any)")
    target: str = setting(DEFAULT_LISTEN_ADDRESS, help="the gRPC front's address host:port")
    token: str | None = setting(None, secret=True, show=lambda _: "none",
                                help="bearer token for the front (prefer the variable)")
    tls: bool = setting(False, parse=config.parse_bool,
                        help="use TLS to the front (system roots unless --tls-ca)")
    tls_ca: Path | None = setting(None, help="CA certificate to trust for the front")
    tls_cert: Path | None = setting(None, help="client certificate (mutual TLS)")
    tls_key: Path | None = setting(None, help="client private key (mutual TLS)")
    timeout_s: float = setting(defaults.DEFAULT_CALL_TIMEOUT_S, flag="timeout",
                               unit="seconds", help="deadline of each call to the front")
    max_image_bytes: int = setting(core_defaults.DEFAULT_MAX_IMAGE_BYTES, unit="bytes",
                                   help="largest image accepted (the page checks it before "
                                        "uploading; the server answers 413 above it)")

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None,
                     environ: Mapping[str, str]) -> WebSettings:
        """Flags (`argv`) over DERMSERVE_* variables (`environ`) over the defaults."""
        return config.build(cls, argv, environ, PROG, DESCRIPTION)
