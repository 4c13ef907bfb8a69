"""Named defaults of the batch domain (jobs, Redis, the BatchJobs API), each with its unit and why.

BatchApiSettings (batch/settings.py) starts from these; flags and DERMSERVE_* variables override.
"""

from __future__ import annotations

# --- redis ---------------------------------------------------------------------------------------
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # loopback, like every default address here
DEFAULT_KEY_PREFIX = "dermserve:batch"  # every key of ours starts with it; rq keeps its own "rq:"
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 30.0
"""Seconds one of our Redis commands may take before the connection counts as dead. rq gets a
connection of its own, whose timeout it raises above its blocking dequeue."""
DEFAULT_REDIS_RETRIES = 8  # attempts per command on a dropped connection (~1 minute with backoff)
DEFAULT_API_REDIS_RETRIES = 2  # the BatchJobs API's attempts: a client waits ~1 s, then gets
# UNAVAILABLE and retries itself, rather than hanging while the worker rides the outage out
DEFAULT_REDIS_BACKOFF_BASE_S = 0.25  # seconds; first wait before reconnecting
DEFAULT_REDIS_BACKOFF_CAP_S = 10.0  # seconds; longest wait, so a restarted Redis is seen soon

# --- jobs ----------------------------------------------------------------------------------------
DEFAULT_OUTPUT_DIR = "var/batch"  # per-job directories: spooled inline images, results, exports
DEFAULT_CHUNK_SIZE = 64  # images per chunk: ~1-2 s of model time on CPU, so a killed worker
# loses little work and a cancel lands within one chunk
DEFAULT_MAX_IMAGES_PER_JOB = 100_000  # images; a large screening archive, and bounded Redis work
DEFAULT_MAX_INLINE_IMAGES = 256  # images sent inside one SubmitBatchJob request
DEFAULT_MAX_INLINE_BYTES = 8 * 1024 * 1024  # bytes of inline images in one request: under the
# front's gRPC message limit (10 MiB + 64 KiB), so this check, not gRPC, answers first
DEFAULT_MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # bytes; ~100,000 paths of 160 characters
DEFAULT_JOB_TTL_S = 7 * 24 * 3600  # seconds a finished job stays readable: a week of nights
DEFAULT_ACTIVE_JOB_TTL_S = 30 * 24 * 3600  # seconds; a safety net so nothing lives forever
MAX_CLIENT_JOB_ID_LENGTH = 128  # characters; documented in the proto
MAX_INLINE_NAME_LENGTH = 512  # characters; documented in the proto
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")  # what a directory reference contributes
# (which files a directory lists; each file's format is still judged by its content)
MANIFEST_SUFFIXES = (".csv", ".txt")  # a file reference with one of these lists images
# (one path a line, or a `path` column); a file with another suffix is a manifest by its header
MAX_REFERENCE_BYTES = 4096  # bytes of one path reference: Linux's PATH_MAX, so a longer one
# could never be opened and is refused before it reaches the file system
DEFAULT_CHUNK_TIMEOUT_S = 600  # seconds; rq kills a chunk stuck this long (64 images take ~2 s)

# --- API -----------------------------------------------------------------------------------------
DEFAULT_WATCH_INTERVAL_S = 0.5  # seconds between progress polls of a WatchBatchJob stream
DEFAULT_PAGE_SIZE = 100  # results per ListBatchJobResults page when the client sets none
MAX_PAGE_SIZE = 1000  # results; bounds one response at ~1 MB
DEFAULT_JOBS_PAGE_SIZE = 50  # jobs per ListBatchJobs page when the client sets none: a screen
MAX_JOBS_PAGE_SIZE = 500  # jobs; ~250 KB of BatchJob messages, and as many hashes read at once
JOBS_READ_BATCH = 100  # index entries read per round trip while listing jobs (at least a page)
MAX_JOBS_READS = 10  # round trips of one ListBatchJobs call: a state filter that matches few
# jobs gets a short page and a token after ~1,000 jobs read, rather than a walk over all of them
DEFAULT_QUEUE_NAME = "dermserve-batch"  # rq queue names are this plus "-high|-normal|-low"
