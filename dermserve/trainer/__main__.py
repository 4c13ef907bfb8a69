"""`python -m dermserve.trainer` / `dermserve-train`: see trainer.cli."""

import sys

from dermserve.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
