"""lvprune's benchmark: pruning methods side by side on one base model (see `harness`).

    lvprune bench [--quick] --out DIR        # or: python -m lvprune.bench [--quick] --out DIR
"""

from .cli import add_bench_parser, main, run_bench
from .methods import METHOD_NAMES
from .report import RESULT_FIELDS

__all__ = ["METHOD_NAMES", "RESULT_FIELDS", "add_bench_parser", "main", "run_bench"]
