"""Named defaults of the front service, each with its unit and the reason for its value.

Settings (service/settings.py) starts from these; flags and DERMSERVE_* variables override them.
"""

from __future__ import annotations

# --- network -------------------------------------------------------------------------------------
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:50051"
"""Loopback by default: auth and TLS are off by default, so the service must not face a network
until an operator chooses an address (deploy/ listens on 0.0.0.0 with auth on)."""

DEFAULT_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464  # TCP port; the conventional Prometheus exporter port range

DEFAULT_GRPC_WORKERS = 64  # threads; each in-flight RPC holds one, and the benchmark runs 32
DEFAULT_MAX_CONCURRENT_RPCS = 256  # calls; beyond it gRPC answers RESOURCE_EXHAUSTED at once

DEFAULT_CREDENTIALS_RELOAD_INTERVAL_S = 5.0
"""Seconds between looks at the tokens file and the TLS files for a rotation: three stat calls, so
cheap; Kubernetes takes up to a minute to update a mounted Secret anyway."""

DEFAULT_GRACE_PERIOD_S = 20.0  # seconds; under Kubernetes' default terminationGracePeriod of 30 s

# --- images --------------------------------------------------------------------------------------
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # bytes; a 24 MP phone JPEG is ~8 MiB
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # pixels; above any camera a clinic uses, ~160 MB decoded
DEFAULT_MIN_IMAGE_SIDE = 64  # pixels; below it a lesion has no texture left (training: 600x450)
DEFAULT_MAX_ASPECT_RATIO = 4.0  # long side / short side; 21:9 phones are 2.3, panoramas are not
# lesions

DEFAULT_DECODE_PIXEL_BUDGET = 4 * DEFAULT_MAX_IMAGE_PIXELS
"""Pixels decoded at once across all calls: four of the largest images, ~640 MB in Pillow (4 bytes
per pixel), so a burst of huge images queues instead of exhausting the pod's memory."""

MESSAGE_OVERHEAD_BYTES = 64 * 1024
"""Room for the non-image fields of a request on top of the image limit."""

# --- model ---------------------------------------------------------------------------------------
DEFAULT_MODEL_NAME = "ham10000"
DEFAULT_BACKEND = "embedded"
DEFAULT_MODEL_BASE = "models"
DEFAULT_POLL_INTERVAL_S = 2.0  # seconds between scans of the model base for new versions
DEFAULT_TFSERVING_TARGET = "127.0.0.1:8500"  # TF Serving's default gRPC port, on loopback
DEFAULT_BACKEND_TIMEOUT_S = 10.0  # seconds; cap for one backend call when the client sets none
DEFAULT_BACKEND_MAX_RETRIES = 2  # retries on UNAVAILABLE; more would outlive typical deadlines

DEFAULT_MIN_CONFIDENCE_FLOOR = 0.0
"""Operators may demand more confidence than a version's own rule; 0 defers to the version."""

# --- micro-batching ------------------------------------------------------------------------------
DEFAULT_BATCH_MAX_SIZE = 32  # images; the benchmark's top concurrency, and CPU batches stop
# paying off beyond it
DEFAULT_BATCH_MAX_WAIT_MS = 10.0
"""Milliseconds a batch may wait for company, at most. The wait is adaptive (service/batching.py):
only until as many images are queued as the previous batch had, so a lone call never waits, while
a burst of clients returning together is gathered into one batch. 10 ms covers the decoding of a
burst of phone-sized JPEGs on two cores and is small next to a batch's model time."""
DEFAULT_BATCH_WORKERS = 1
"""Batches in flight at once. One suits the embedded backend (TensorFlow already uses every core
for one batch); TF Serving over a network hides latency better with 2-4."""
DEFAULT_BATCH_QUEUE_LIMIT = 1024  # images waiting; beyond it calls fail fast (RESOURCE_EXHAUSTED)

# --- health --------------------------------------------------------------------------------------
DEFAULT_HEALTH_INTERVAL_S = 2.0
"""Seconds between probes (resolve the latest version and classify one blank image): fast enough
for a readiness probe, cheap enough (one image) to be noise on the model."""

# --- requests ------------------------------------------------------------------------------------
MAX_REQUEST_ID_LENGTH = 128  # characters; documented in the proto

# --- client --------------------------------------------------------------------------------------
DEFAULT_CLIENT_TIMEOUT_S = 30.0  # seconds per call from `dermserve classify`
