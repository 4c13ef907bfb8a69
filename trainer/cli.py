"""`dermserve-train`: build the one TrainSettings from flags and `DERMSERVE_*` variables, then run
the pipeline. Every TrainSettings field is a flag (`--input-size`) and a variable
(`DERMSERVE_INPUT_SIZE`); a flag wins over the variable, the variable over the default."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import DermserveError
from trainer.settings import TrainSettings

ENV_PREFIX = "DERMSERVE_"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [arg for arg in args if arg is not type(None)]
        return kinds[0], type(None) in args
    return annotation, False


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(annotation: Any) -> Callable[[str], Any]:
    kind, optional = _base_type(annotation)
    convert: Callable[[str], Any] = _parse_bool if kind is bool else kind

    def parse(text: str) -> Any:
        return None if optional and text.lower() in ("", "none") else convert(text)
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermserve-train", description="Train, evaluate and publish a HAM10000 model version.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG_NAME> in the environment.")
    hints = typing.get_type_hints(TrainSettings)
    for item in dataclasses.fields(TrainSettings):
        flag = "--" + item.name.replace("_", "-")
        if _base_type(hints[item.name])[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=_converter(hints[item.name]), default=None,
                                help=f"default: {item.default}")
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> TrainSettings:
    """Flags over environment over defaults."""
    hints = typing.get_type_hints(TrainSettings)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(TrainSettings):
        flag_value = getattr(args, item.name)
        env_value = environ.get(ENV_PREFIX + item.name.upper())
        if flag_value is not None:
            values[item.name] = flag_value
        elif env_value is not None:
            values[item.name] = _converter(hints[item.name])(env_value)
    return TrainSettings(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        settings = settings_from(args, os.environ)
    except ValueError as exc:  # a setting out of its range: a usage error, exit 2
        parser.error(str(exc))
    from trainer.pipeline import run

    try:
        version_dir = run(settings)
    except DermserveError as exc:
        logging.getLogger("trainer").error("%s", exc)
        return 2
    print(Path(version_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
