"""lvprune's benchmark: pruning methods side by side on one base model and one test split (see `harness`).

    lvprune bench --out DIR --base BASE --pruner PRUNER --test_json test.json    # or python -m lvprune.bench
"""

from lvprune.bench.cli import main, run_bench
from lvprune.bench.config import BenchConfig
from lvprune.bench.methods import METHOD_NAMES
from lvprune.bench.report import RESULT_FIELDS

__all__ = ["METHOD_NAMES", "RESULT_FIELDS", "BenchConfig", "main", "run_bench"]
