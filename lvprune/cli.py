"""The ``lvprune`` command line.

    lvprune flops MODEL_DIR --text-tokens 30 --images 1 --keep-ratios 0.5 0.3 0.1 \
        [--after-layers 1 8 16] [--plphp R DR] [--plphp-start-layer 2] [--dtype-bytes 2] [--image-size WxH]
    lvprune bench --out DIR --base DIR --pruner DIR --test_json FILE [--quick] [--KEY VALUE ...]

Each subcommand is registered by one ``_add_<name>_command(subparsers)`` function that builds its
parser and sets ``func``, the function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

PAPER_AFTER_LAYERS = (1, 8, 16)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="lvprune", description="Vision-token pruning for LLaVA models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_flops_command(subparsers)
    _add_bench_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input found past parsing: report it the way argparse does
        args.command_parser.error(str(err))


# ----------------------------------------------------------------------------- bench


def _add_bench_command(subparsers) -> None:
    from lvprune.bench.cli import add_bench_parser  # argparse only: the harness imports lazily

    add_bench_parser(subparsers)


# ----------------------------------------------------------------------------- flops


def _add_flops_command(subparsers) -> None:
    flops = subparsers.add_parser(
        "flops",
        help="analytic prefill TFLOPs and KV-cache bytes, pruned and unpruned, as JSON",
        description="Analytic prefill TFLOPs and KV-cache bytes of one sample (see lvprune.flops), for "
                    "the model types llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl, mistral3 "
                    "and internvl. The output also says which image size, and so how many vision "
                    "tokens per image, were assumed.",
    )
    flops.add_argument("model_dir", metavar="MODEL_DIR", help="folder holding the model's config.json")
    flops.add_argument("--text-tokens", type=int, default=30, help="non-vision prompt tokens (default 30)")
    flops.add_argument("--images", type=int, default=1, help="images in the prompt (default 1)")
    flops.add_argument("--keep-ratios", type=_keep_ratio, nargs="+", default=[], metavar="RHO",
                       help="cumulative fraction of vision tokens kept after each LVPruning stage")
    flops.add_argument("--after-layers", type=int, nargs="+", default=None, metavar="L",
                       help="1-based decoder layers the stages follow (default 1 8 16 when "
                            "--keep-ratios is given)")
    flops.add_argument("--plphp", type=float, nargs=2, default=None, metavar=("R", "DR"),
                       help="PLPHP retention rate r and delta_r (KV cache only)")
    flops.add_argument("--plphp-start-layer", type=int, default=2, metavar="L",
                       help="first 0-based decoder layer PLPHP prunes, as PLPHPConfig.start_layer (default 2)")
    flops.add_argument("--dtype-bytes", type=int, default=None,
                       help="bytes per KV element (default: from the config's torch_dtype)")
    flops.add_argument("--image-size", type=_image_size, default=None, metavar="WxH",
                       help="width x height of each image in pixels, e.g. 1280x720, or one number for a "
                            "square (default: the family's typical size, see lvprune.flops."
                            "its Backbone.typical_image_size; LLaVA-1.5 always sees its 336x336 tile)")
    flops.set_defaults(func=_run_flops, command_parser=flops)


def _run_flops(args: argparse.Namespace) -> int:
    from lvprune.flops import estimate_cost  # keeps `lvprune --help` free of transformers' import time

    estimate = estimate_cost(
        _load_config(args.model_dir),
        images=args.images,
        text_tokens=args.text_tokens,
        after_layers=_after_layers(args),
        keep_ratios=tuple(args.keep_ratios),
        plphp=tuple(args.plphp) if args.plphp else None,
        plphp_start_layer=args.plphp_start_layer,
        dtype_bytes=args.dtype_bytes,
        image_size=args.image_size,
    )
    out = dataclasses.asdict(estimate)
    height, width = estimate.image_size
    out["image_size"] = {"width": width, "height": height}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _image_size(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` (or one number, a square) in pixels -> ``(height, width)``."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT in pixels, e.g. 672x672") from None
    if len(parts) > 2 or width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT in pixels, e.g. 672x672")
    return height, width


def _keep_ratio(text: str) -> float:
    """argparse type: a float in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]")
    return value


def _after_layers(args: argparse.Namespace) -> tuple[int, ...]:
    """The stages' layers: as given, else the paper's 1 8 16 for three keep ratios, else none."""
    if args.after_layers is not None:
        return tuple(args.after_layers)
    if not args.keep_ratios:
        return ()
    if len(args.keep_ratios) != len(PAPER_AFTER_LAYERS):
        raise ValueError(f"{len(args.keep_ratios)} keep ratios given without --after-layers; the "
                         f"default --after-layers 1 8 16 needs 3")
    return PAPER_AFTER_LAYERS


def _load_config(model_dir: str):
    """``AutoConfig`` from a local folder, never the network."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"MODEL_DIR {model_dir!r} has no config.json")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


if __name__ == "__main__":
    sys.exit(main())
