"""`python -m dermserve.worker` / `dermserve-worker`: run one batch worker."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from dermserve.core.exiting import exit_now
    from dermserve.worker.runner import run_worker
    from dermserve.worker.settings import parse_settings

    exit_now(run_worker(parse_settings(sys.argv[1:], os.environ)))  # core/exiting.py


if __name__ == "__main__":
    main()
