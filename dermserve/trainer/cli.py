"""`dermserve-train`: build the one TrainSettings from flags and `DERMSERVE_*` variables, then run
the pipeline. Every TrainSettings field is a flag (`--input-size`) and a variable
(`DERMSERVE_INPUT_SIZE`), declared once through core.config like every other entry point's; a flag
wins over the variable, the variable over the default."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dermserve.core import config
from dermserve.core.errors import DermserveError
from dermserve.trainer.settings import TrainSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Every TrainSettings field as a flag, its default read from `environ` (core.config)."""
    parser = config.build_parser(TrainSettings, os.environ if environ is None else environ,
                                 "dermserve-train",
                                 "Train, evaluate and publish a HAM10000 model version.")
    parser.add_argument("--log-level", default="INFO", help="logging level [default INFO]")
    return parser


def settings_from(args: argparse.Namespace) -> TrainSettings:
    """The settings the parsed flags (over the environment the parser read) give."""
    return config.assemble(TrainSettings, vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        settings = settings_from(args)
    except ValueError as exc:  # a setting out of its range: a usage error, exit 2
        parser.error(str(exc))
    return run_pipeline(settings)


def run_pipeline(settings: TrainSettings, hooks: Any = None) -> int:
    """Run the pipeline (with `trainer.pipeline.NetworkHooks`, else the default network) and
    print the published version's directory; a dermserve error is logged, exit status 2."""
    from dermserve.trainer.pipeline import run

    try:
        version_dir = run(settings, hooks)
    except DermserveError as exc:
        logging.getLogger("dermserve.trainer").error("%s", exc)
        return 2
    print(Path(version_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
