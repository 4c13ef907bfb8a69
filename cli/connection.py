"""How every `dermserve` subcommand reaches the service: the connection flags (target, token,
TLS), the channel, the call metadata, and a failed call as a {code, reason, message} entry.

Connection flags read DERMSERVE_TARGET, DERMSERVE_TOKEN, DERMSERVE_TLS_CA, ... as defaults.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, cast

import grpc

from core.tls import channel_credentials
from service.defaults import DEFAULT_LISTEN_ADDRESS
from service.status import REASON_METADATA_KEY

DEFAULT_CLIENT_TIMEOUT_S = 30.0  # seconds per call from `dermserve`


def add_connection_arguments(parser: argparse.ArgumentParser,
                             environ: Mapping[str, str]) -> None:
    """Where the service is and how to authenticate; env DERMSERVE_* gives the defaults."""
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=environ.get("DERMSERVE_TARGET",
                                                       DEFAULT_LISTEN_ADDRESS),
                       help="service address host:port [env DERMSERVE_TARGET]")
    group.add_argument("--token", default=environ.get("DERMSERVE_TOKEN"),
                       help="bearer token [env DERMSERVE_TOKEN]")
    group.add_argument("--tls", action="store_true",
                       default=bool(environ.get("DERMSERVE_TLS_CA")),
                       help="use TLS (system roots unless --tls-ca)")
    for name, text in (("ca", "CA certificate to trust"), ("cert", "client certificate (mTLS)"),
                       ("key", "client private key (mTLS)")):
        env = f"DERMSERVE_TLS_{name.upper()}"
        group.add_argument(f"--tls-{name}", type=Path, default=environ.get(env) or None,
                           help=f"{text} [env {env}]")
    group.add_argument("--timeout", type=float, default=DEFAULT_CLIENT_TIMEOUT_S,
                       help="seconds per call")


class ConnectionOptions(Protocol):
    """What opening a channel needs: the CLI's parsed flags, or the web page's settings."""

    @property
    def target(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...


def open_channel(args: ConnectionOptions) -> grpc.Channel:
    if args.tls or args.tls_ca or args.tls_cert:
        return grpc.secure_channel(args.target, channel_credentials(args.tls_ca, args.tls_cert,
                                                                    args.tls_key))
    return grpc.insecure_channel(args.target)


def call_metadata(args: ConnectionOptions) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {args.token}"),) if args.token else None


def error_entry(error: grpc.RpcError) -> dict[str, str]:
    call = cast(grpc.Call, error)  # an error raised by a stub call is also that grpc.Call
    # At run time metadata items are (key, value) tuples; grpc-stubs types them otherwise.
    pairs = cast(Sequence[tuple[str, str]], call.trailing_metadata() or ())
    reason = next((str(value) for key, value in pairs if key == REASON_METADATA_KEY), "")
    return {"code": call.code().name, "reason": reason, "message": call.details() or ""}
