"""Named defaults of the batch worker process, each with its unit and why.

WorkerSettings (worker/settings.py) starts from these and from batch/defaults.py; flags and
DERMSERVE_* variables override.
"""

from __future__ import annotations

# --- chunks --------------------------------------------------------------------------------------
DEFAULT_IMAGES_PER_CALL = 8  # images per classifier call inside a chunk; the cancel flag is
# checked between calls. 8 is the batch size the raw sweep finds cheapest per image on 2 CPU
# cores, as in the front (bench-results/NOTES.md; `make bench` prints the sweep); larger
# batches spill the caches.
DEFAULT_PIPELINE_DEPTH = 2  # classifier calls in flight per chunk: one decodes while one predicts

# --- leases and recovery -------------------------------------------------------------------------
DEFAULT_LEASE_TTL_S = 15.0
"""Seconds a running chunk's lease lives without renewal. A worker renews it every third of that;
after a SIGKILL the chunk is re-queued within about this long plus one reap interval."""
DEFAULT_REAP_INTERVAL_S = 5.0  # seconds between scans for abandoned chunks and unfinished exports
DEFAULT_REAP_GRACE_S = 10.0  # seconds a new job is left alone, so its enqueueing can finish
DEFAULT_MAX_CHUNK_ATTEMPTS = 3
"""Runs of one chunk before its images are recorded as failed: a chunk that kills its worker
every time (a poison image) must not stall the job forever."""

# --- transient backend errors --------------------------------------------------------------------
DEFAULT_BACKEND_RETRIES = 4  # retries of one classifier call on UNAVAILABLE / DEADLINE_EXCEEDED
DEFAULT_BACKOFF_BASE_S = 0.5  # seconds; doubled each retry: 0.5, 1, 2, 4 = 7.5 s in all
DEFAULT_BACKOFF_CAP_S = 8.0  # seconds; longest single wait
DEFAULT_CLASSIFY_TIMEOUT_S = 120.0  # seconds for one classifier call of DEFAULT_IMAGES_PER_CALL
# images (up to --pipeline-depth calls share the machine)

# --- worker process ------------------------------------------------------------------------------
DEFAULT_WORKER_METRICS_PORT = 9465  # TCP port; next to the front's 9464
DEFAULT_WORKER_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_MODEL_READY_TIMEOUT_S = 300.0  # seconds to wait for a first model version at start-up
DEFAULT_RQ_WORKER_TTL_S = 60  # seconds; rq blocks on the queue for this minus 15, so a stop or a
# dead connection is noticed within a minute rather than rq's default seven
DEFAULT_RESTART_BACKOFF_CAP_S = 30.0  # seconds; longest wait before the rq loop is restarted
