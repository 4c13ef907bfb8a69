"""How a client reaches the front: where it is, the token, TLS; the channel, the call metadata,
and a failed call as a {code, reason, message} entry.

The settings read DERMSERVE_TARGET, DERMSERVE_TOKEN, DERMSERVE_TLS, DERMSERVE_TLS_CA, ... as
defaults: `dermserve` (cli/) and `dermserve-web` (web/) declare them through this one class.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from dermserve.core import config
from dermserve.core.config import setting
from dermserve.core.tls import channel_credentials
from dermserve.protocol.wire import DEFAULT_ADDRESS, REASON_METADATA_KEY

DEFAULT_CLIENT_TIMEOUT_S = 30.0  # seconds per call from `dermserve`


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the front is and how to authenticate to it."""

    target: str = setting(DEFAULT_ADDRESS, help="the gRPC front's address host:port")
    token: str | None = setting(None, secret=True, show=lambda _: "none",
                                help="bearer token for the front (prefer the variable)")
    tls: bool = setting(False, parse=config.parse_bool,
                        help="use TLS to the front (system roots unless --tls-ca)")
    tls_ca: Path | None = setting(None, help="CA certificate to trust for the front")
    tls_cert: Path | None = setting(None, help="client certificate (mutual TLS)")
    tls_key: Path | None = setting(None, help="client private key (mutual TLS)")


def add_connection_arguments(parser: argparse.ArgumentParser,
                             environ: Mapping[str, str]) -> None:
    """The connection settings as flags of a parser (env DERMSERVE_* gives the defaults); the
    parsed namespace then answers `open_channel` and `call_metadata` as the settings do."""
    for option in config.options(ConnectionSettings):
        config.add_option(parser, option, environ)
    parser.add_argument("--timeout", type=float, default=DEFAULT_CLIENT_TIMEOUT_S,
                        help="seconds per call")


def open_channel(settings: ConnectionSettings | argparse.Namespace) -> grpc.Channel:
    if settings.tls or settings.tls_ca or settings.tls_cert:
        return grpc.secure_channel(settings.target, channel_credentials(
            settings.tls_ca, settings.tls_cert, settings.tls_key))
    return grpc.insecure_channel(settings.target)


def call_metadata(settings: ConnectionSettings | argparse.Namespace
                  ) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {settings.token}"),) if settings.token else None


def error_entry(error: grpc.RpcError) -> dict[str, str]:
    call = cast(grpc.Call, error)  # an error raised by a stub call is also that grpc.Call
    # At run time metadata items are (key, value) tuples; grpc-stubs types them otherwise.
    pairs = cast(Sequence[tuple[str, str]], call.trailing_metadata() or ())
    reason = next((str(value) for key, value in pairs if key == REASON_METADATA_KEY), "")
    return {"code": call.code().name, "reason": reason, "message": call.details() or ""}
