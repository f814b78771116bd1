"""The ``lvprune`` command line.

    lvprune flops --model_dir DIR [--text_tokens 30] [--images 1] [--keep_ratios 0.5 0.3 0.1] \
        [--after_layers 1 8 16] [--plphp_r R --plphp_delta_r DR] [--plphp_start_layer 2] [--dtype_bytes 2] \
        [--image_size WxH]
    lvprune bench --out DIR --base DIR --pruner DIR --test_json FILE [--quick] [--KEY VALUE ...]
    lvprune methods                       # the registered pruning methods, their kind, options and papers

A command is a settings dataclass (its options: `lvprune.utils.command_line`, `--config FILE` included) and the function
that runs it, one entry of `commands()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from lvprune.methods.plphp import PLPHPOptions
from lvprune.utils.command_line import build_parser as settings_parser
from lvprune.utils.command_line import doc, parse

PAPER_AFTER_LAYERS = (1, 8, 16)


@dataclass
class FlopsConfig(PLPHPOptions):
    """Analytic prefill TFLOPs and KV-cache bytes of one sample (see lvprune.flops), for the model types llava,
    llava_next, llava_onevision, qwen2_vl, qwen2_5_vl, mistral3 and internvl, printed as JSON. The output also
    says which image size, and so how many vision tokens per image, were assumed. Any plphp_ setting adds
    PLPHP's KV cache (its r, delta_r and start_layer)."""

    model_dir: str | None = doc(None, "folder holding the model's config.json (required)")
    text_tokens: int = doc(30, "non-vision prompt tokens")
    images: int = doc(1, "images in the prompt")
    keep_ratios: list[float] = doc([], "cumulative fraction of vision tokens kept after each LVPruning stage")
    after_layers: list[int] | None = doc(None, "1-based decoder layers the stages follow (unset: 1 8 16 when "
                                         "three keep_ratios are given)")
    dtype_bytes: int | None = doc(None, "bytes per KV element (unset: from the config's dtype)")
    image_size: str | None = doc(None, "width x height of each image in pixels, e.g. 1280x720, or one number for "
                                 "a square (unset: the family's typical size, its Backbone.typical_image_size; "
                                 "LLaVA-1.5 always sees its 336x336 tile)")

    def __post_init__(self):
        if not all(0.0 < r <= 1.0 for r in self.keep_ratios):
            raise ValueError(f"keep_ratios={self.keep_ratios} must each be in (0, 1].")
        if self.image_size is not None:
            image_size(self.image_size)
        self.plphp_press()  # checks the PLPHP fields


@dataclass
class MethodsConfig:
    """The pruning methods lvprune registers (lvprune.methods), one line each: name, kind (a stage pruner removes
    vision rows after chosen layers; a cache press drops vision slots per KV head after the prefill), options with
    their defaults, and the paper."""


class Command(NamedTuple):
    config: type
    run: Callable
    help: str


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it lists the commands (each command parses its own options)."""
    parser = argparse.ArgumentParser(prog="lvprune", description="Vision-token pruning for vision-language models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands().items():
        subparsers.add_parser(name, help=command.help, add_help=False)
    return parser


def commands() -> dict[str, Command]:
    from lvprune.bench.cli import run_bench  # the harness itself imports lazily
    from lvprune.bench.config import BenchConfig

    return {"flops": Command(FlopsConfig, _run_flops, "analytic prefill TFLOPs and KV-cache bytes, pruned and "
                             "unpruned, as JSON"),
            "bench": Command(BenchConfig, run_bench, "benchmark the pruning methods side by side"),
            "methods": Command(MethodsConfig, _run_methods, "list the registered pruning methods (lvprune.methods)")}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    table = commands()
    if not argv or argv[0] not in table:
        build_parser().parse_args(argv[:1])  # --help, or the error that lists the commands
    command = table[argv[0]]
    parser = settings_parser(command.config, prog=f"lvprune {argv[0]}")
    config = parse(command.config, argv[1:], parser=parser)
    try:
        return command.run(config)
    except ValueError as err:  # bad input found past parsing: reported the way argparse does
        parser.error(str(err))


# ----------------------------------------------------------------------------- methods


def _run_methods(config: MethodsConfig) -> int:
    from lvprune.methods import METHODS

    kinds = {"stage": "stage pruner", "press": "cache press"}
    for method in METHODS.values():
        options = " ".join(f"{name}={'(required)' if default is inspect.Parameter.empty else default}"
                           for name, default in method.options().items())
        print(f"{method.name:10} {kinds[method.kind]:12} {method.summary}")
        print(f"{'':23} options: {options or 'none'}" + (f"; paper: {method.paper}" if method.paper else ""))
    return 0


# ----------------------------------------------------------------------------- flops


def _run_flops(config: FlopsConfig) -> int:
    from lvprune.flops import estimate_cost  # keeps `lvprune --help` free of the model code's import time

    if config.model_dir is None:
        raise ValueError("--model_dir is required: the folder holding the model's config.json.")
    plphp = config.plphp_press()
    estimate = estimate_cost(
        _load_config(config.model_dir),
        images=config.images,
        text_tokens=config.text_tokens,
        after_layers=_after_layers(config),
        keep_ratios=tuple(config.keep_ratios),
        plphp=(plphp.r, plphp.delta_r) if plphp else None,
        plphp_start_layer=plphp.start_layer if plphp else 2,
        dtype_bytes=config.dtype_bytes,
        image_size=image_size(config.image_size) if config.image_size else None,
    )
    out = dataclasses.asdict(estimate)
    height, width = estimate.image_size
    out["image_size"] = {"width": width, "height": height}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def image_size(text: str) -> tuple[int, int]:
    """``WxH`` (or one number, a square) in pixels -> ``(height, width)``."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ValueError(f"image_size={text!r} is not WIDTHxHEIGHT in pixels, e.g. 672x672") from None
    if len(parts) > 2 or width <= 0 or height <= 0:
        raise ValueError(f"image_size={text!r} is not WIDTHxHEIGHT in pixels, e.g. 672x672")
    return height, width


def _after_layers(config: FlopsConfig) -> tuple[int, ...]:
    """The stages' layers: as given, else the paper's 1 8 16 for three keep ratios, else none."""
    if config.after_layers is not None:
        return tuple(config.after_layers)
    if not config.keep_ratios:
        return ()
    if len(config.keep_ratios) != len(PAPER_AFTER_LAYERS):
        raise ValueError(f"{len(config.keep_ratios)} keep ratios given without --after_layers; the "
                         f"default --after_layers 1 8 16 needs 3")
    return PAPER_AFTER_LAYERS


def _load_config(model_dir: str):
    """``AutoConfig`` from a local folder, never the network."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"--model_dir {model_dir!r} has no config.json")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


if __name__ == "__main__":
    sys.exit(main())
