"""`python -m service` / `dermserve-server`: run the gRPC front service."""

import os
import sys

from core.exiting import exit_now
from service.logs import configure_logging
from service.server import optional_services, serve
from service.settings import Settings


def main() -> None:
    settings = Settings.from_sources(sys.argv[1:], os.environ)
    configure_logging(settings.log_format, settings.log_level)
    serve(settings, optional_services(settings))
    exit_now(0)  # skip TensorFlow's slow teardown: everything is closed (core/exiting.py)


if __name__ == "__main__":
    main()
