"""Named defaults of the gRPC front service, each with its unit and the reason for its value.

Settings (service/settings.py) starts from these and from core/defaults.py; flags and DERMSERVE_*
variables override them.
"""

from __future__ import annotations

from dermserve.protocol import wire

# --- network -------------------------------------------------------------------------------------
DEFAULT_LISTEN_ADDRESS = wire.DEFAULT_ADDRESS
"""Loopback by default: auth and TLS are off by default, so the service must not face a network
until an operator chooses an address (deploy/ listens on 0.0.0.0 with auth on)."""

DEFAULT_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464  # TCP port; the conventional Prometheus exporter port range

DEFAULT_GRPC_WORKERS = 64  # threads; each in-flight RPC holds one, and the benchmark runs 32
DEFAULT_MAX_CONCURRENT_RPCS = 256  # calls; beyond it gRPC answers RESOURCE_EXHAUSTED at once

# --- streams ------------------------------------------------------------------------------------
DEFAULT_MAX_STREAMS = 0
"""Streaming calls (ClassifyStream, WatchBatchJob, reflection) open at once, all clients together;
0 means half of the gRPC threads (32 of 64), which follows `--grpc-workers` when only that is
changed. Each stream holds a handler thread for as long as it is open, so capping them at half
the threads keeps the other half for unary calls (Classify, GetBatchJob...) however many streams
clients open; past it a stream is refused with RESOURCE_EXHAUSTED (reason TOO_MANY_STREAMS)."""

STREAM_SHARE_OF_WORKERS = 0.5  # of the gRPC threads, for streams when max_streams is 0

DEFAULT_MAX_STREAMS_PER_CLIENT = 8
"""Streams one client (the identity a call acts as, service.auth.caller_of: its token's, else its
client certificate subject; an anonymous call, its address) may hold open at once, health watches
counted apart; past it RESOURCE_EXHAUSTED (TOO_MANY_CLIENT_STREAMS).
A client wanting more throughput sends more images down one ClassifyStream (16 in flight), so 8
is generous, and it takes four clients to fill the server's stream share instead of one."""

DEFAULT_MAX_HEALTH_WATCHES = 32
"""grpc.health.v1 Watch streams open at once. They need no token and hold no thread, but each
holds one of the `max_concurrent_rpcs` call slots; load balancers and meshes open a few each."""

DEFAULT_STREAM_IDLE_TIMEOUT_S = 120.0
"""Seconds a stream may carry no message either way before it ends with DEADLINE_EXCEEDED
(reason STREAM_IDLE), so that abandoned streams give their slot back. Far above the gap between
images of a working ClassifyStream; a WatchBatchJob on a job queued behind others may be quiet
for longer, and reconnecting every two minutes costs nothing. Health watches are exempt."""
DEFAULT_CREDENTIALS_RELOAD_INTERVAL_S = 5.0
"""Seconds between looks at the tokens file and the TLS files for a rotation: three stat calls, so
cheap; Kubernetes takes up to a minute to update a mounted Secret anyway."""

DEFAULT_GRACE_PERIOD_S = 20.0  # seconds; under Kubernetes' default terminationGracePeriod of 30 s

# --- health --------------------------------------------------------------------------------------
DEFAULT_HEALTH_INTERVAL_S = 2.0
"""Seconds between probes (resolve the latest version and classify one blank image): fast enough
for a readiness probe, cheap enough (one image) to be noise on the model."""

# --- requests ------------------------------------------------------------------------------------
MAX_REQUEST_ID_LENGTH = 128  # characters; documented in the proto
MAX_VERSION_LABEL_LENGTH = 64  # characters; labels are words like "stable" (echoed in errors)

# --- client --------------------------------------------------------------------------------------
DEFAULT_CLIENT_TIMEOUT_S = 30.0  # seconds per call from `dermserve classify`
