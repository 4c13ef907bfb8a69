"""A test-only hook that makes "kill a worker inside a chunk" deterministic.

`python -m tests.worker.hold WORKER_FLAGS...` runs a worker (the product's settings and flags)
with the hold installed: once it has claimed
its first chunk and holds its lease, announces `<job_id>:<index>:<pid>` on the Redis list
`<prefix>:test:inside` and then waits, lease kept alive, until something is pushed to
`<prefix>:test:release`. A test pops the announcement (BLPOP: no polling, no timing) and kills
the worker exactly there. The product worker has no such flag; later chunks run normally.
"""

from __future__ import annotations

import os
import sys

from dermserve.batch.store import JobStore

WAIT_SLICE_S = 5  # seconds per BLPOP: well under the Redis client's socket timeout


class FirstChunkHold:
    """Holds the first chunk this process claims (see the module docstring)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.used = False

    def __call__(self, job_id: str, index: int) -> None:
        if self.used:
            return
        self.used = True
        self.store.announce_held(f"{job_id}:{index}:{os.getpid()}")
        while not self.store.wait_for_release(WAIT_SLICE_S):
            pass


def main() -> None:
    from dermserve.core.exiting import exit_now
    from dermserve.worker.runner import run_worker
    from dermserve.worker.settings import parse_settings

    exit_now(run_worker(parse_settings(sys.argv[1:], os.environ), FirstChunkHold))


if __name__ == "__main__":
    main()
