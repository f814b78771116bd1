"""The `bench` command: `lvprune bench --out DIR --base B --pruner P --test_json T` (or `python -m lvprune.bench`).

Its options are `BenchConfig`'s fields (`--config FILE` reads them from YAML). `add_bench_parser(subparsers)`
registers it on the `lvprune` command line; `run_bench(args)` runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..settings import add_arguments, from_args
from .config import BenchConfig

DESCRIPTION = ("Compare unpruned, random, FastV, PLPHP and LVPruning (ρ = 0.6, 0.5, 0.45, and 0.5 + PLPHP) on "
               "one base model and one test split; writes results.json, results.md, accuracy_vs_flops.png and "
               "kept_patches.png.")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on an `argparse` subparsers object; the parsed args carry `func=run_bench`."""
    parser = subparsers.add_parser("bench", help="benchmark the pruning methods side by side", description=DESCRIPTION)
    add_arguments(parser, BenchConfig)
    parser.set_defaults(func=run_bench, command_parser=parser)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the Markdown table and returns 0."""
    from .harness import run

    config = from_args(BenchConfig, args)
    config.check_complete()
    run(config)
    print((Path(config.out) / "results.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lvprune.bench ...`: the same options as `lvprune bench`."""
    parser = argparse.ArgumentParser(prog="python -m lvprune.bench", description=DESCRIPTION)
    add_arguments(parser, BenchConfig)
    args = parser.parse_args(argv)
    try:
        return run_bench(args)
    except ValueError as error:
        parser.error(str(error))
