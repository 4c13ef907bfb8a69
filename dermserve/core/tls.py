"""Client-side TLS credentials, for the connections dermserve makes itself (to TF Serving) and
for its clients (the CLI, the tools). Server-side credentials live with the front (service/auth.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc


def channel_credentials(ca: Path | None = None, cert: Path | None = None,
                        key: Path | None = None) -> grpc.ChannelCredentials:
    """Client-side TLS: trust `ca` (default: the system roots); `cert`+`key` for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)
