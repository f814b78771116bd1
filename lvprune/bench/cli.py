"""The `bench` command: `lvprune bench [--quick] --out DIR` or `python -m lvprune.bench [--quick] --out DIR`.

`add_bench_parser(subparsers)` registers it on the `lvprune` command line; `run_bench(args)` runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

DESCRIPTION = ("Compare unpruned, random, FastV, PLPHP and LVPruning (ρ = 0.6, 0.5, 0.45, and 0.5 + PLPHP) on "
               "one base model and the shapes test split; writes results.json, results.md, "
               "accuracy_vs_flops.png and kept_patches.png.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the results and figures")
    parser.add_argument("--quick", action="store_true", help="a smoke test on a few questions (under ~2 minutes)")
    parser.add_argument("--base", type=Path, default=None,
                        help="base LLaVA folder (default: the reference base, trained on first use)")
    parser.add_argument("--pruner", type=Path, default=None,
                        help="trained LVPruning pruner folder (default: one trained on the base and cached)")
    parser.add_argument("--test-json", type=Path, default=None,
                        help="LLaVA-format test records (default: the shapes test split, generated)")
    parser.add_argument("--image-folder", type=Path, default=None, help="images of --test-json (default: its folder)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: ~/.cache/lvprune)")
    parser.add_argument("--test-records", type=int, default=500, help="test questions (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch for accuracy (default 32)")
    parser.add_argument("--timing-runs", type=int, default=7, help="timing rounds, medians reported (default 7)")
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="back-to-back runs per method and round, the fastest counts (default 3)")
    parser.add_argument("--timing-batch-size", type=int, default=16,
                        help="prompts per timed prefill / decode step (default 16; 1 times single prompts)")
    parser.add_argument("--plphp", type=float, nargs=5, default=None, metavar=("R", "DR", "ALPHA", "BETA", "START"),
                        help="PLPHP's r, delta_r, alpha, beta and first pruned layer (0-based) for the plphp rows "
                             "(default: PLPHPConfig's defaults)")
    parser.add_argument("--fastv-layer", type=int, default=2, help="FastV's layer K, 1-based (default 2)")
    parser.add_argument("--seed", type=int, default=0)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on an `argparse` subparsers object; the parsed args carry `func=run_bench`."""
    parser = subparsers.add_parser("bench", help="benchmark the pruning methods side by side", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run_bench, command_parser=parser)
    return parser


def plphp_config(values) -> PLPHPConfig:
    """`--plphp R DR ALPHA BETA START` as a `PLPHPConfig` (its defaults without the flag)."""
    from ..plphp import PLPHPConfig

    if values is None:
        return PLPHPConfig()
    r, delta_r, alpha, beta, start = values
    if start != int(start):
        raise ValueError(f"--plphp START must be a layer index, got {start}")
    return PLPHPConfig(r=r, delta_r=delta_r, alpha=alpha, beta=beta, start_layer=int(start))


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the Markdown table and returns 0."""
    from .harness import BenchConfig, run

    config = BenchConfig(
        out=args.out, base=args.base, pruner=args.pruner, test_json=args.test_json, image_folder=args.image_folder,
        cache_dir=args.cache_dir, quick=args.quick, test_records=args.test_records, batch_size=args.batch_size,
        timing_runs=args.timing_runs, timing_repeats=args.timing_repeats, timing_batch_size=args.timing_batch_size,
        plphp=plphp_config(args.plphp), fastv_layer=args.fastv_layer, seed=args.seed,
    )
    run(config)
    print((Path(args.out) / "results.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lvprune.bench ...`: the same arguments as `lvprune bench`."""
    parser = argparse.ArgumentParser(prog="python -m lvprune.bench", description=DESCRIPTION)
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))
