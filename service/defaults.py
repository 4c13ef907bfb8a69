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

# --- images --------------------------------------------------------------------------------------
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # bytes; a 24 MP phone JPEG is ~8 MiB
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # pixels; above any camera a clinic uses, ~160 MB decoded
DEFAULT_MIN_IMAGE_SIDE = 64  # pixels; below it a lesion has no texture left (training: 600x450)
DEFAULT_MAX_ASPECT_RATIO = 4.0  # long side / short side; 21:9 phones are 2.3, panoramas are not
# lesions

DEFAULT_DECODE_PIXEL_BUDGET = 4 * DEFAULT_MAX_IMAGE_PIXELS
"""Pixels alive in decoders at once across all calls, every full-size copy counted: ~640 MB in
Pillow (4 bytes per pixel), so a burst of huge images queues instead of exhausting the pod's
memory. Two of the largest PNGs fit (a decoded image and its converted or rotated copy each);
JPEGs decode at reduced scale, so a 40-megapixel JPEG takes about 1.3 million of it."""

DEFAULT_MAX_JPEG_SCANS = 100
"""Scans a JPEG may have: libjpeg's progressive script writes 10 and mozjpeg's optimised ones
fewer than 30, while CPU bombs carry thousands (each scan walks every block of the image)."""

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
