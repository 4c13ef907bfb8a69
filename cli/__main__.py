"""`python -m cli` / `dermserve`: the command-line client."""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
