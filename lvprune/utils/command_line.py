"""One configuration mechanism for every entry point: dataclass defaults <- a YAML file <- `--key value`.

    config = parse(TrainConfig, ["--config", "configs/llava-1.5-7b.yaml", "--max_steps", "10"])

The options are transformers' `HfArgumentParser`'s, one per field of the dataclass, documented by
`doc(default, help)`: typed (`--max_steps INT`), several words only for list fields (`--keep_ratios 0.6 0.4 0.2`),
a `Literal` field's choices listed by `--help` and checked, `--flag` / `--flag false` for booleans, `null` for an
optional field. Unknown keys, in the YAML file or on the command line, are errors that suggest the closest field;
every error is one line that names the option, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

NULLS = ("null", "none", "~")


def doc(default, help: str):
    """A dataclass field with a default and its documentation (shown by `--help`, with the default)."""
    metadata = {"help": help.replace("%", "%%")}  # argparse formats help with %
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def build_parser(cls, default_file: Path | None = None, prog: str | None = None,
                 description: str | None = None) -> HfArgumentParser:
    """`--config FILE` and one typed `--<field>` option per field of dataclass `cls`."""
    parser = HfArgumentParser(cls, prog=prog, description=description or cls.__doc__, allow_abbrev=False,
                              usage="%(prog)s [--config FILE] [--KEY VALUE ...]", formatter_class=_HelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings" + (
        f" (default: {default_file.name} if present)" if default_file else ""))
    hints = typing.get_type_hints(cls)
    for action in parser._actions:
        if action.dest in hints:
            _describe(action, hints[action.dest])
    return parser


def parse(cls, argv=None, default_file: Path | None = None, prog: str | None = None, parser=None):
    """An instance of dataclass `cls`: its defaults <- `--config` YAML (else `default_file`, when it exists) <-
    `--key value` overrides. A bad command line or value exits with status 2 and one line naming the option."""
    parser = parser or build_parser(cls, default_file, prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        path = _config_file(argv, default_file)
        values = read_yaml(path) if path is not None else {}
        check_keys(cls, values, source=str(path))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    parser.set_defaults(**values)  # the YAML's values under the command line's
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(_extra_message(cls, argv, extra))
    given = {item.name: _nulls(getattr(args, item.name)) for item in dataclasses.fields(cls)}
    try:
        return from_dict(cls, given, source=str(path or "command line"))
    except ValueError as error:
        parser.error(str(error))


def read_yaml(path: Path) -> dict:
    """The mapping of a YAML config file (an empty file is an empty mapping)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    return values


def check_keys(cls, values: dict, source: str = "config") -> None:
    """Raise `ValueError` naming the keys of `values` that are not fields of `cls`, with the closest field."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{source}: {_unknown_message(cls, unknown)}")


def from_dict(cls, values: dict, source: str = "config"):
    """Build dataclass `cls` from a mapping, converting each value to its field's type."""
    check_keys(cls, values, source)
    hints = typing.get_type_hints(cls)
    return cls(**{key: coerce(key, value, hints[key]) for key, value in values.items()})


def to_yaml(config) -> str:
    """A configuration as YAML (written next to a run's outputs)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def check_finite(config) -> None:
    """Raise `ValueError` naming the first field holding a NaN or an infinity."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{item.name}={value} must be a finite number.")


def check_choices(config) -> None:
    """Raise `ValueError` naming the first `Literal` field whose value is not one of its choices (a dataclass
    built in Python is not checked by the parser)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        choices = _choices(hint)
        value = getattr(config, name)
        if choices and value is not None and value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {choices}.")


def coerce(name: str, value, hint):
    """`value` as the type `hint` of field `name`; `ValueError` naming the field otherwise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in NULLS):
            return None
        return coerce(name, value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is typing.Literal:
        if value not in args:
            raise ValueError(f"{name}={value!r} is not one of {args}.")
        return value
    if hint is str:
        return str(value)
    if hint is Path:
        return Path(value)
    if typing.get_origin(hint) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(name, item, args[0]) for item in items]
    if hint is bool and isinstance(value, bool):
        return value
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads `1e-3` as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name}={value!r} is not a valid {getattr(hint, '__name__', hint)}.")


# ----------------------------------------------------------------------------- the parser's options


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except an unset one (its help says what unset means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _describe(action: argparse.Action, hint) -> None:
    """Show the option's type in `--help` (`INT`, `FLOAT [FLOAT ...]`, `{a,b}`) and let an optional field take
    `null`."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    item = typing.get_args(inner)[0] if typing.get_origin(inner) is list else inner
    if not action.choices and action.type is not None:
        action.metavar = "BOOL" if item is bool else getattr(item, "__name__", "VALUE").upper()
    if optional and not action.choices and action.type is not None:
        action.type = _or_null(action.type)


def _or_null(convert):
    def converted(word: str):
        return None if word.lower() in NULLS else convert(word)

    converted.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
    return converted


def _nulls(value):
    """`[None]` (a list option given `null`) as None."""
    return None if isinstance(value, list) and value and all(v is None for v in value) else value


def _choices(hint) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((_choices(a) for a in typing.get_args(hint) if _choices(a)), ())
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _config_file(argv: list[str], default_file: Path | None) -> Path | None:
    """The `--config FILE` of `argv` (the last one), else `default_file` when it exists."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    given = pre.parse_known_args(argv)[0].config
    if given:
        return Path(given)
    return default_file if default_file is not None and default_file.is_file() else None


def _extra_message(cls, argv: list[str], extra: list[str]) -> str:
    """What the parser could not place: an unknown option (with the closest field), or a word after an option
    that takes one value."""
    options = [w[2:].split("=")[0].replace("-", "_") for w in extra if w.startswith("--")]
    if options:
        return f"command line: {_unknown_message(cls, options)}"
    word = extra[0]
    before = argv[:argv.index(word)]
    option = next((w for w in reversed(before) if w.startswith("-")), None)
    if option is None:
        return f"unexpected word {word!r}: every setting is given as --KEY VALUE."
    return f"argument {option}: takes one value; {word!r} is one too many (a list is given to list options only)."


def _unknown_message(cls, keys) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    hints = {key: difflib.get_close_matches(key, names, n=1) for key in keys}
    named = ", ".join(f"{key!r}" + (f" (did you mean {hints[key][0]!r}?)" if hints[key] else "") for key in keys)
    return f"unknown key(s) {named}; every key is a field of {cls.__name__} (see --help)."


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
