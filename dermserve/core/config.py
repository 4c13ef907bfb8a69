"""One way to build settings for every entry point: a frozen dataclass declares each setting once
(`setting(default, help=..., unit=...)`), and `build(cls, argv, environ)` turns it into flags and
`DERMSERVE_*` variables. A flag wins over its variable, the variable over the default.

- The flag is `--field-name` and the variable `DERMSERVE_FIELD_NAME`, unless the declaration
  names another flag (`flag="listen"`); the variable always follows the flag's name.
- A field declared with `group(SomeSettings)` is a nested settings dataclass whose fields are
  flags too (`settings.streams.max_streams` <- `--max-streams`). Groups that several programs
  share (the model and backend here, Redis in worker/settings.py) are dataclasses the programs'
  settings inherit from, so the same setting has the same flag, variable and meaning everywhere.
- `--help` lists every setting with its unit, its default (after the environment) and its
  variable.

Nothing here reads the environment or the command line at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dermserve.core.numbers import ascii_natural

ENV_PREFIX = "DERMSERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
NONE_WORDS = ("", "none")  # an optional setting given as empty or "none" is unset
UNITS_BY_SUFFIX = (("_ms", "milliseconds"), ("_s", "seconds"), ("_bytes", "bytes"),
                   ("_pixels", "pixels"))
"""The unit a field's name gives away, when its declaration names none."""

S = TypeVar("S")


@dataclass(frozen=True)
class Declaration:
    """What a setting says about itself besides its type and default."""

    help: str = ""
    unit: str = ""
    flag: str = ""  # without the dashes; default: the field name with dashes
    choices: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None  # default: judged by the field's type
    show: Callable[[Any], str] | None = None  # how --help prints the default
    secret: bool = False  # never printed once set (a token, a URL that may carry a password)


def setting(default: Any = dataclasses.MISSING, *, help: str, unit: str = "", flag: str = "",
            choices: Sequence[str] = (), parse: Callable[[str], Any] | None = None,
            show: Callable[[Any], str] | None = None, secret: bool = False,
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is also a flag and a variable. `secret` keeps it out of repr."""
    declaration = Declaration(help, unit, flag, tuple(choices), parse, show, secret)
    metadata = {"setting": declaration}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def group(cls: type[Any]) -> Any:
    """A nested settings dataclass, built from its own fields' flags."""
    return dataclasses.field(default_factory=cls, metadata={"group": True})


def parse_bool(text: str) -> bool:
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional_path(text: str) -> Path | None:
    return Path(text) if text.strip().lower() not in NONE_WORDS else None


def path_list(text: str) -> tuple[Path, ...]:
    """Directories separated by os.pathsep (':'), as in PATH."""
    return tuple(Path(part) for part in text.split(os.pathsep) if part)


def parse_labels(text: str) -> dict[str, int]:
    """'stable=3,canary=4' -> {'stable': 3, 'canary': 4}."""
    labels: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = item.partition("=")
        version = ascii_natural(number)
        if not sep or not name or version is None:
            raise argparse.ArgumentTypeError(f"expected LABEL=VERSION, got {item!r}")
        labels[name] = version
    return labels


def show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return os.pathsep.join(map(str, value)) or "none"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else "empty"


def converter(annotation: Any) -> Callable[[str], Any]:
    """How a flag's or a variable's text becomes a value of the field's type."""
    kinds = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (kind,) = [k for k in kinds if k is not type(None)]
        if kind is Path:
            return optional_path
        inner = converter(kind)
        return lambda text: inner(text) if text.strip().lower() not in NONE_WORDS else None
    if annotation is bool:
        return parse_bool
    if typing.get_origin(annotation) is tuple and kinds[:1] == (Path,):
        return path_list
    if annotation in (str, int, float, Path):
        return typing.cast(Callable[[str], Any], annotation)
    raise TypeError(f"no parser for {annotation!r}: declare one with parse=")


@dataclass(frozen=True)
class Option:
    """One setting of a settings class, flattened: `path` is its field names from the root."""

    path: tuple[str, ...]
    declaration: Declaration
    parse: Callable[[str], Any]
    default: Any
    is_bool: bool

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + (self.declaration.flag or self.path[-1].replace("_", "-"))

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag[2:].upper().replace("-", "_")

    @property
    def unit(self) -> str:
        if self.declaration.unit:
            return self.declaration.unit
        return next((unit for suffix, unit in UNITS_BY_SUFFIX if self.path[-1].endswith(suffix)),
                    "")

    def convert(self, text: str) -> Any:
        choices = self.declaration.choices
        if choices and text not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(choices)})")
        return self.parse(text)


def options(cls: type[Any], prefix: tuple[str, ...] = ()) -> Iterator[Option]:
    """Every setting of `cls`, nested groups included, in declaration order."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.metadata.get("group"):
            yield from options(hints[item.name], (*prefix, item.name))
            continue
        declaration = item.metadata.get("setting", Declaration())
        default = (item.default if item.default is not dataclasses.MISSING
                   else item.default_factory())  # type: ignore[operator]
        parse = declaration.parse or converter(hints[item.name])
        yield Option((*prefix, item.name), declaration, parse, default,
                     hints[item.name] is bool)


def env_names(cls: type[Any]) -> set[str]:
    """Every variable `cls` reads."""
    return {option.env for option in options(cls)}


def environment_default(option: Option, environ: Mapping[str, str],
                        parser: argparse.ArgumentParser) -> Any:
    """The option's default after the environment (its variable)."""
    name, text = option.env, environ.get(option.env)
    if text is None:
        return option.default
    try:
        return option.convert(text)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"{name}={text!r}: {exc}")


def help_text(option: Option, default: Any) -> str:
    shown = (option.declaration.show or show_default)(default)
    if option.declaration.secret and default != option.default:
        shown = "hidden"
    unit = f"{option.unit}; " if option.unit else ""
    text = f"{option.declaration.help} [{unit}default {shown}; env {option.env}]"
    return text.replace("%", "%%")  # argparse %-formats help strings ("95% intervals")


def add_option(parser: argparse.ArgumentParser, option: Option, environ: Mapping[str, str]
               ) -> None:
    default = environment_default(option, environ, parser)
    # A bool flag alone means true; `--flag=false` (or the variable) says false.
    kind: dict[str, Any] = ({"nargs": "?", "const": True, "metavar": "BOOL"} if option.is_bool
                            else {"metavar": "{" + ",".join(option.declaration.choices) + "}"}
                            if option.declaration.choices
                            else {"metavar": option.flag[2:].upper().replace("-", "_")})
    parser.add_argument(option.flag, dest=option.dest, type=option.convert, default=default,
                        help=help_text(option, default), **kind)


def build_parser(cls: type[Any], environ: Mapping[str, str], prog: str,
                 description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=f"Every flag --some-name also reads {ENV_PREFIX}SOME_NAME; the flag wins.")
    for option in options(cls):
        add_option(parser, option, environ)
    return parser


def assemble(cls: type[S], values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> S:
    """An instance of `cls` from the parsed values, nested groups built the same way."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = (*prefix, item.name)
        kwargs[item.name] = (assemble(hints[item.name], values, path)
                             if item.metadata.get("group") else values["__".join(path)])
    return cls(**kwargs)


def build(cls: type[S], argv: Sequence[str] | None, environ: Mapping[str, str], prog: str,
          description: str = "") -> S:
    """Flags (`argv`) over variables (`environ`) over the declared defaults."""
    parser = build_parser(cls, environ, prog, description)
    return assemble(cls, vars(parser.parse_args(argv)))


def from_environment(cls: type[S], environ: Mapping[str, str]) -> S:
    """Variables over defaults, no flags (for a test or a tool that configures by environment)."""
    return build(cls, [], environ, prog=cls.__name__)
