"""Named defaults of the web page's server, each with its unit and the reason for its value."""

from __future__ import annotations

DEFAULT_WEB_LISTEN_ADDRESS = "127.0.0.1:8080"
"""Loopback by default: in a cluster the Ingress reaches the pod's address given by the flag."""

DEFAULT_CALL_TIMEOUT_S = 30.0
"""Seconds per gRPC call to the front: as the CLI, above a cold model's first answer."""

MAX_JSON_BODY_BYTES = 4 * 1024
"""Bytes a JSON request body may have: the page sends only job ids and version numbers."""

JOBS_PAGE_SIZE = 20  # jobs the jobs view lists at once; "Show older jobs" asks for the next 20
RESULTS_PAGE_SIZE = 1000  # results per ListBatchJobResults call: the front's maximum page

MODEL_CACHE_SIZE = 16
"""Model versions whose GetModel answer is kept (the operating point of each result needs it);
a version's metrics never change once published, and there are only a few versions."""

DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host header names the page answers (without the port): the loopback names, so that a DNS
rebinding page cannot reach the loopback default under its own name. A deployment names the
Ingress host (deploy/)."""

DEFAULT_TRUSTED_PROXIES = ()
"""Addresses (CIDRs) whose identity headers are believed: none, the local default (one local
user, the page's own token identity). A deployment names its authenticating proxy's pods."""

DEFAULT_USER_HEADER = "x-forwarded-user"
DEFAULT_GROUPS_HEADER = "x-forwarded-groups"
"""What oauth2-proxy sends upstream with --pass-user-headers (comma-separated groups); behind
ingress-nginx's auth_request the X-Auth-Request-* names apply instead (deploy/)."""

MAX_CONCURRENT_UPLOADS = 4
"""Uploads read and forwarded at once; the next waits for a slot (UPLOAD_WAIT_S) unread, then
gets 503 with Retry-After. A large upload is held about three times while it is analysed (the
body, the gRPC request and its serialised copy), so the slots bound the page's peak memory, and
4 leave room below its 512 Mi pod limit (bench-results/NOTES.md, "The page's uploads"; `python
-m devtools.attack --quick --family web_uploads` reports the page's RSS peak)."""

UPLOAD_WAIT_S = 30.0
"""Seconds an upload may wait for a slot (its body unread: uvicorn buffers 64 KiB of it) before
503: a browser sends up to 6 images at once, so a drop of several waits rather than fails."""

RETRY_AFTER_S = 2  # seconds a refused upload is told to wait: about one image's analysis

MAX_CONNECTIONS = 512
"""Open connections and requests in flight at most; uvicorn answers a request beyond with 503.
Idle and half-open connections count too, so a slowloris of more sockets than this gets the page
503s until HEADER_TIMEOUT_S closes them; each costs a few kB, not a thread."""

HEADER_TIMEOUT_S = 10.0
"""Seconds a connection may take to send a complete request head (a slowloris is closed)."""

BODY_IDLE_TIMEOUT_S = 10.0
"""Seconds an upload may go without sending a byte before it is refused (408) and dropped."""

UPLOAD_TIMEOUT_S = 60.0
"""Seconds a whole upload may take: 10 MiB at about 170 KiB/s, a slow clinic link."""

KEEP_ALIVE_S = 5
"""Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)."""

MAX_HEADER_BYTES = 16 * 1024
"""Bytes of a request head (h11's max_incomplete_event_size): larger heads get 400."""

GRACEFUL_SHUTDOWN_S = 20
"""Seconds SIGTERM waits for requests in flight, within the pod's termination grace period."""

MAX_CONTEXT_CHARS = 64  # characters of a patient context header: the longest site is 15
MAX_JOB_ID_CHARS = 128
"""Characters of a job id the page forwards, echoes or logs: the front's own limit on client job
ids (server ids are shorter); a longer one is refused with 400 before it goes anywhere."""

MAX_PAGE_TOKEN_CHARS = 256  # characters of a jobs list page token (the front's are short)

MAX_LOGGED_PATH_CHARS = 200  # characters of a request path the access log keeps

MAX_VERSION_DIGITS = 9  # a model version parsed from a query: ASCII digits, below 10**9
