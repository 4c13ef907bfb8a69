"""`python -m dermserve.web` / `dermserve-web`: serve the clinicians' page."""

import os
import sys

from dermserve.web.server import serve
from dermserve.web.settings import WebSettings


def main() -> None:
    serve(WebSettings.from_sources(sys.argv[1:], os.environ))


if __name__ == "__main__":
    main()
