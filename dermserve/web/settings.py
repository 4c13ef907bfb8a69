"""The web server's one Settings object, declared once (core/config.py) and built once at the
entry point. The connection settings are the CLI's (client/connection.py: DERMSERVE_TARGET,
DERMSERVE_TOKEN, DERMSERVE_TLS_CA, ...), and the upload limit the front's
(DERMSERVE_MAX_IMAGE_BYTES), so one environment configures both alike."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dermserve.client.connection import ConnectionSettings
from dermserve.core import config
from dermserve.core import defaults as core_defaults
from dermserve.core.config import setting
from dermserve.web import defaults

PROG = "dermserve-web"
DESCRIPTION = "Serve the clinicians' web page, a client of the dermserve gRPC front."


def word_list(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); lower case (host names and CIDRs are case-blind)."""
    return tuple(word.strip().lower() for word in text.split(",") if word.strip())


def network_list(text: str) -> tuple[str, ...]:
    """'10.0.0.0/8,::1' -> the CIDRs, normalised; argparse's error for one that is not."""
    try:
        return tuple(str(ipaddress.ip_network(word, strict=False)) for word in word_list(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def show_words(words: tuple[str, ...]) -> str:
    return ",".join(words) or "none"


@dataclass(frozen=True)
class WebSettings:
    """Where the page listens, how it reaches the front, and what it accepts."""

    listen_address: str = setting(defaults.DEFAULT_WEB_LISTEN_ADDRESS, flag="web-listen",
                                  help="HTTP address host:port of the page (port 0: any)")
    connection: ConnectionSettings = config.group(ConnectionSettings)
    timeout_s: float = setting(defaults.DEFAULT_CALL_TIMEOUT_S, flag="timeout",
                               unit="seconds", help="deadline of each call to the front")
    max_image_bytes: int = setting(core_defaults.DEFAULT_MAX_IMAGE_BYTES, unit="bytes",
                                   help="largest image accepted (the page checks it before "
                                        "uploading; the server answers 413 above it)")
    trusted_proxies: tuple[str, ...] = setting(
        defaults.DEFAULT_TRUSTED_PROXIES, parse=network_list, show=show_words,
        help="CIDRs of the authenticating proxy whose identity headers (X-Forwarded-User, "
             "X-Auth-Request-User, ...) are believed; none: one local user, the page's token")
    user_header: str = setting(
        defaults.DEFAULT_USER_HEADER, help="header in which the proxy names the user")
    groups_header: str = setting(defaults.DEFAULT_GROUPS_HEADER,
                                 help="header listing the user's groups, comma-separated")
    operator_group: str = setting("", help="group (X-Forwarded-Groups) whose members are "
                                           "operators and see every job; empty: nobody")
    allowed_hosts: tuple[str, ...] = setting(
        defaults.DEFAULT_ALLOWED_HOSTS, parse=word_list, show=show_words,
        help="Host header names the page answers, without the port (others get 421)")
    max_concurrent_uploads: int = setting(defaults.MAX_CONCURRENT_UPLOADS,
                                          help="uploads read and analysed at once")
    upload_wait_s: float = setting(defaults.UPLOAD_WAIT_S,
                                   help="time an upload may wait for a slot (then 503)")
    max_connections: int = setting(defaults.MAX_CONNECTIONS,
                                   help="open connections at most (the next gets 503)")
    header_timeout_s: float = setting(defaults.HEADER_TIMEOUT_S,
                                      help="time to send a request's head before the close")
    body_idle_timeout_s: float = setting(defaults.BODY_IDLE_TIMEOUT_S,
                                         help="time an upload may send nothing (then 408)")
    upload_timeout_s: float = setting(defaults.UPLOAD_TIMEOUT_S,
                                      help="time a whole upload may take (then 408)")

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None,
                     environ: Mapping[str, str]) -> WebSettings:
        """Flags (`argv`) over DERMSERVE_* variables (`environ`) over the defaults."""
        return config.build(cls, argv, environ, PROG, DESCRIPTION)

    @property
    def behind_proxy(self) -> bool:
        """Whether users come through an authenticating proxy (else: one local user)."""
        return bool(self.trusted_proxies)
