"""`python -m dermserve.cli` / `dermserve`: the command-line client."""

import sys

from dermserve.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
