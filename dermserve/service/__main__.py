"""`python -m dermserve.service` / `dermserve-server`: run the gRPC front service."""

import os
import sys

from dermserve.core.exiting import exit_now
from dermserve.service.logs import configure_logging
from dermserve.service.server import optional_services, serve
from dermserve.service.settings import Settings


def main() -> None:
    settings = Settings.from_sources(sys.argv[1:], os.environ)
    configure_logging(settings.log_format, settings.log_level)
    serve(settings, optional_services(settings))
    exit_now(0)  # skip TensorFlow's slow teardown: everything is closed (core/exiting.py)


if __name__ == "__main__":
    main()
