"""The `bench` command: `lvprune bench --out DIR --base B --pruner P --test_json T` (or `python -m lvprune.bench`).

Its options are `BenchConfig`'s fields (`--config FILE` reads them from YAML, `lvprune.utils.command_line`); `run_bench(config)`
runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lvprune.bench.config import BenchConfig
from lvprune.utils.command_line import build_parser, parse

DESCRIPTION = ("Compare unpruned, random, FastV, PLPHP and LVPruning (ρ = 0.6, 0.5, 0.45, and 0.5 + PLPHP) on "
               "one base model and one test split; writes results.json, results.md, accuracy_vs_flops.png and "
               "kept_patches.png.")


def run_bench(config: BenchConfig) -> int:
    """Run the benchmark `config` describes; prints the Markdown table and returns 0."""
    from lvprune.bench.harness import run

    config.check_complete()
    run(config)
    print((Path(config.out) / "results.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lvprune.bench ...`: the same options as `lvprune bench`."""
    parser = build_parser(BenchConfig, prog="python -m lvprune.bench", description=DESCRIPTION)
    config = parse(BenchConfig, argv, parser=parser)
    try:
        return run_bench(config)
    except ValueError as error:
        parser.error(str(error))
