"""Named defaults of the core (images, the model backend, micro-batching), each with its unit
and the reason for its value. The front's (service/defaults.py) and the worker's
(worker/defaults.py) own knobs live beside them; settings start from these, flags and DERMSERVE_*
variables override.
"""

from __future__ import annotations

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

DEFAULT_MAX_JPEG_JUNK_BYTES = 4096
"""Bytes a JPEG may carry between its markers before its first scan that are neither a marker
nor a segment (junk, fill bytes): encoders write none, a few repaired files carry padding.
Pillow skips such bytes one read at a time (`FF D8 FF` and 10 MiB of zeros cost 5 s of CPU), so
more than this is refused before Pillow sees the file."""

DEFAULT_MAX_DICOM_ELEMENTS = 10_000
"""Data elements, sequence items and pixel data fragments a DICOM file may hold, at every level
together, counted in its bytes before pydicom parses it (core/image/dicom_scan.py). A single-frame
photograph holds about a hundred; pydicom builds an object for each, so a 10 MiB file of 1.3
million empty items would cost about a gigabyte."""

DEFAULT_MAX_DICOM_DEPTH = 16
"""Sequences a DICOM file may nest inside one another: photographs nest two or three (a code
sequence in a code sequence); pydicom reads them recursively."""

MAX_NUMBER_DIGITS = 18
"""Digits a number parsed from text may have (core/numbers.py): 10**18 - 1 still fits in the
int64 fields and Redis integers the number ends up in."""

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

DEFAULT_INTRA_OP_THREADS = 1
"""embedded: threads TensorFlow splits one op over (0: TensorFlow's choice, one per core). One
op per thread beats splitting on the released version, an ensemble of three networks that the
inter-op pool already runs side by side, so splitting each op too makes the pool's threads hand
work to each other (measured: bench-results/NOTES.md, "TensorFlow's threads")."""
DEFAULT_INTER_OP_THREADS = 0
"""embedded: ops TensorFlow runs at once (0: TensorFlow's choice, one per core). One would run
the ensemble's networks one after another (slower in the same run: bench-results/NOTES.md)."""

DEFAULT_FREEZE_GRAPH = True
"""embedded: fold a version's variables into constants when it loads (core/backends/savedmodel.py
`freeze_serving`), so TensorFlow fuses each batch normalisation, bias and activation into its
convolution, which more than halves the CPU per image on the released version. It costs a few
seconds per load and some memory per loaded version (both measured: bench-results/NOTES.md,
"Freezing the graph"; `make bench` records `raw.as_loaded` beside the frozen figures); a version
whose frozen graph answers differently is served as it is."""

DEFAULT_MIN_CONFIDENCE_FLOOR = 0.0
"""Operators may demand more confidence than a version's own rule; 0 defers to the version."""

# --- micro-batching ------------------------------------------------------------------------------
DEFAULT_BATCH_MAX_SIZE = 8
"""Images in one micro-batch, at most. With one thread per op (DEFAULT_INTRA_OP_THREADS) larger
batches cost more CPU per image on the released ensemble, and two batches of up to 8 in flight
beat batches of up to 32 at 32 clients (bench-results/NOTES.md, "Batch size 8"). Versions are
warmed up at every size up to it."""
DEFAULT_BATCH_MAX_WAIT_MS = 10.0
"""Milliseconds a batch may wait for company, at most. The wait is adaptive (core/batching.py):
only until as many images are queued as the previous batch had, so a lone call never waits, while
a burst of clients returning together is gathered into one batch. 10 ms covers the decoding of a
burst of phone-sized JPEGs on two cores and is small next to a batch's model time."""
DEFAULT_BATCH_WORKERS = 2
"""Batches in flight at once. With one thread per op (DEFAULT_INTRA_OP_THREADS) one batch leaves
cores idle between its ops; two keep both cores of a small pod busy. TF Serving over a network
hides latency better with 2-4 too."""
DEFAULT_BATCH_QUEUE_LIMIT = 1024  # images waiting; beyond it calls fail fast (RESOURCE_EXHAUSTED)
