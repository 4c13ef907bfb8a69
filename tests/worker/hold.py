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


def inside_key(store: JobStore) -> str:
    """Where the held worker announces itself (a test BLPOPs it)."""
    return f"{store.prefix}:test:inside"


def release_key(store: JobStore) -> str:
    return f"{store.prefix}:test:release"


class FirstChunkHold:
    """Holds the first chunk this process claims (see the module docstring). The keys are the
    job store's Redis and prefix, so a test's store sees them; the product's store has no hold."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.used = False

    def __call__(self, job_id: str, index: int) -> None:
        if self.used:
            return
        self.used = True
        self.store.client.rpush(inside_key(self.store), f"{job_id}:{index}:{os.getpid()}")
        while not self.store.client.blpop([release_key(self.store)], timeout=WAIT_SLICE_S):
            pass


def main() -> None:
    from dermserve.core.exiting import exit_now
    from dermserve.worker.runner import run_worker
    from dermserve.worker.settings import parse_settings

    exit_now(run_worker(parse_settings(sys.argv[1:], os.environ), FirstChunkHold))


if __name__ == "__main__":
    main()
