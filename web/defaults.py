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
