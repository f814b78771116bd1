"""One configuration mechanism for every entry point: dataclass defaults <- a YAML file <- `--key value`.

    config = parse(TrainConfig, ["--config", "configs/llava-1.5-7b.yaml", "--max_steps", "10"])

Every key is a field of the dataclass, documented by `doc(default, help)` (`--help` lists them). Unknown keys, in
the YAML file or on the command line, are errors that suggest the closest field. Command-line values are read
as YAML scalars (`--lora_r 8`, `--bf16 true`, `--after_layers null`); lists take several words or one YAML list
(`--keep_ratios 0.6 0.4 0.2` or `--keep_ratios "[0.6, 0.4, 0.2]"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from pathlib import Path

import yaml


def doc(default, help: str):
    """A dataclass field with a default and its documentation (shown by `--help`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse(cls, argv=None, default_file: Path | None = None, prog: str | None = None):
    """An instance of dataclass `cls`: its defaults <- `--config` YAML (else `default_file`, when it exists) <-
    `--key value` overrides."""
    args, unknown = build_parser(cls, default_file, prog).parse_known_args(argv)
    if unknown:
        words = [w.lstrip("-") for w in unknown if w.startswith("--")] or unknown
        raise ValueError(f"command line: {_unknown_message(cls, words)}")
    return from_args(cls, args, default_file)


def from_args(cls, args: argparse.Namespace, default_file: Path | None = None):
    """Dataclass `cls` from a namespace parsed by a parser `add_arguments(parser, cls)` set up."""
    values = {}
    path = Path(args.config) if args.config else default_file
    if args.config or (path is not None and path.is_file()):
        values.update(read_yaml(path))
    names = {item.name for item in dataclasses.fields(cls)}
    values.update({key: _cli_value(words) for key, words in vars(args).items() if key in names and words})
    return from_dict(cls, values, source=str(path) if path else "config")


def build_parser(cls, default_file: Path | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__, allow_abbrev=False,
                                     usage="%(prog)s [--config FILE] [--KEY VALUE ...]")
    return add_arguments(parser, cls, default_file)


def add_arguments(parser: argparse.ArgumentParser, cls, default_file: Path | None = None) -> argparse.ArgumentParser:
    """`--config FILE` and one `--<field> VALUE...` option per field of dataclass `cls`, documented from `doc`."""
    parser.add_argument("--config", help="YAML file of settings" + (
        f" (default: {default_file.name} if present)" if default_file else ""))
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        text = f"{item.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats with %
        if hints[item.name] is bool:  # `--quick` alone is `--quick true`
            parser.add_argument(f"--{item.name}", nargs="?", const=["true"], type=lambda word: [word],
                                metavar="BOOL", help=text)
        else:
            parser.add_argument(f"--{item.name}", nargs="+", metavar="VALUE", help=text)
    return parser


def read_yaml(path: Path) -> dict:
    """The mapping of a YAML config file (an empty file is an empty mapping)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    return values


def from_dict(cls, values: dict, source: str = "config"):
    """Build dataclass `cls` from a mapping, converting each value to its field's type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: {_unknown_message(cls, unknown)}")
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


def one_of(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {options}.")


def _cli_value(words: list[str]):
    # One word is a YAML scalar or list; several words are a list. Strings are kept raw for str fields.
    return _Raw(words[0]) if len(words) == 1 else [yaml.safe_load(word) for word in words]


class _Raw(str):
    """A command-line word not yet read as YAML (a str field takes it as is)."""


def _unknown_message(cls, keys) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    hints = {key: difflib.get_close_matches(key, names, n=1) for key in keys}
    named = ", ".join(f"{key!r}" + (f" (did you mean {hints[key][0]!r}?)" if hints[key] else "") for key in keys)
    return f"unknown key(s) {named}; every key is a field of {cls.__name__} (see --help)."


def coerce(name: str, value, hint):
    """`value` as the type `hint` of field `name`; `ValueError` naming the field otherwise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _Raw) and value.lower() in ("null", "none", "~")):
            return None
        return coerce(name, value, next(a for a in args if a is not type(None)))
    if hint is str:
        return str(value)
    if hint is Path:
        return Path(value)
    if isinstance(value, _Raw):
        value = yaml.safe_load(value)
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


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
