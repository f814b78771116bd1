"""lvprune's benchmark: pruning methods side by side on one base model and one test split (see `harness`).

    lvprune bench --out DIR --base BASE --pruner PRUNER --test_json test.json    # or python -m lvprune.bench
"""

from .cli import main, run_bench
from .config import BenchConfig
from .methods import METHOD_NAMES
from .report import RESULT_FIELDS

__all__ = ["METHOD_NAMES", "RESULT_FIELDS", "BenchConfig", "main", "run_bench"]
