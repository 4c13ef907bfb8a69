"""Names both ends of a call must agree on."""

from __future__ import annotations

REASON_METADATA_KEY = "dermserve-reason"
"""Trailing metadata key of a failed call's stable reason (core/errors.py's `reason`);
documented in the proto."""

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Where the front listens, and so where a client looks, unless told otherwise: loopback and
gRPC's conventional port (service/defaults.py says why loopback)."""
