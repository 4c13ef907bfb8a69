"""`python -m worker` / `dermserve-worker`: run one batch worker."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from worker.runner import run_worker
    from worker.settings import parse_settings

    return run_worker(parse_settings(sys.argv[1:], os.environ))


if __name__ == "__main__":
    sys.exit(main())
