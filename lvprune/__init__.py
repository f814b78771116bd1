"""lvprune: vision-token pruning for vision-language models (the families of `lvprune.families`).

- `lvprune.core`: the pruning machinery on a stock model (hooks, attention, cache, stats); it runs a stage pruner
  and/or a cache press and imports no method.
- `lvprune.methods`: the methods, one file each, registered by name: LVPruning (trained, `LVPrunerConfig`,
  `LVPrunerModel`, `LVPruningForTraining`), PLPHP (`PLPHPPress`), FastV, random, kvpress's scorers.
- Pruned decoding: `load_pruned_model`, `pruning` (context manager), `Pruning`, `unprune`.
- Analytic cost of a configuration: `estimate_cost`; PLPHP's thresholds on a model: `vision_attention_profile`;
  the queries to come, gathered on calibration prompts: `query_statistics`.
- The trainer (`lvprune.training`), data in the LLaVA instruction format (`lvprune.data`), the benchmark
  (`lvprune.bench`), the Hub (`lvprune.hub`).
"""

from lvprune import deprecated
from lvprune.core.protocols import CachePress, StagePruner
from lvprune.core.pruned_cache import PrunedCache
from lvprune.core.pruning import Pruning, pruning, unprune
from lvprune.core.stages import StageSchedule
from lvprune.core.stats import LayerStats, PruningStats
from lvprune.flops import CostEstimate, PruningPlan, estimate_cost
from lvprune.hub import model_card, push_folder, write_model_card
from lvprune.methods import METHODS, build
from lvprune.methods.dart import DARTPruner
from lvprune.methods.divprune import DivPrunePruner
from lvprune.methods.fastv import FastVPruner
from lvprune.methods.lvpruning import LVPrunerConfig, LVPrunerModel, LVPruningForTraining, LVPruningOutput
from lvprune.methods.plphp import (
    PLPHPPress,
    QueryStatistics,
    query_statistics,
    suggest_thresholds,
    vision_attention_profile,
)
from lvprune.methods.pyramid_drop import PyramidDropPruner
from lvprune.methods.random_pruning import RandomPruner
from lvprune.methods.visionzip import VisionZipPruner
from lvprune.serving import load_pruned_model

__version__ = "0.2.0"

__all__ = [
    "LVPrunerConfig",
    "LVPrunerModel",
    "LVPruningForTraining",
    "LVPruningOutput",
    "PLPHPPress",
    "QueryStatistics",
    "DARTPruner",
    "DivPrunePruner",
    "FastVPruner",
    "PyramidDropPruner",
    "RandomPruner",
    "VisionZipPruner",
    "METHODS",
    "build",
    "CachePress",
    "StagePruner",
    "StageSchedule",
    "Pruning",
    "PrunedCache",
    "PruningStats",
    "LayerStats",
    "load_pruned_model",
    "pruning",
    "unprune",
    "estimate_cost",
    "CostEstimate",
    "PruningPlan",
    "vision_attention_profile",
    "query_statistics",
    "suggest_thresholds",
    "model_card",
    "write_model_card",
    "push_folder",
]

deprecated.install()


def __getattr__(name: str):
    return deprecated.renamed_attribute(__name__, name)
