"""lvprune: vision-token pruning for vision-language models (the families of `lvprune.backbones`).

- LVPruning (trained, language-guided): `LVPrunerConfig`, `LVPrunerModel`, `LVPruningForTraining`, a
  `StagePruner` (the base of stage pruners; the random and FastV baselines are others).
- PLPHP (training-free, per-layer per-head KV pruning): `PLPHPConfig`, a `CachePress` (the base of cache presses).
- Pruned decoding on a stock model: `load_pruned_model`, `pruning` (context manager), `unprune`.
- Analytic cost of a configuration: `estimate_cost`; PLPHP threshold measurement: `vision_attention_profile`.
- Training (`lvprune.train`), data in the LLaVA instruction format (`lvprune.data`), the benchmark (`lvprune.bench`).
"""

from .cache import PrunedCache
from .calibration import suggest_thresholds, vision_attention_profile
from .config import LVPrunerConfig
from .flops import CostEstimate, PruningPlan, estimate_cost
from .hub import model_card, push_folder, write_model_card
from .inference import Pruning, load_pruned_model, pruning, unprune
from .modeling import LVPrunerModel
from .plphp import PLPHPConfig
from .press import CachePress
from .stage import StagePruner
from .stats import LayerStats, PruningStats
from .training import LVPruningForTraining, LVPruningOutput

__version__ = "0.1.0"

__all__ = [
    "LVPrunerConfig",
    "LVPrunerModel",
    "LVPruningForTraining",
    "LVPruningOutput",
    "PLPHPConfig",
    "CachePress",
    "StagePruner",
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
    "suggest_thresholds",
    "model_card",
    "write_model_card",
    "push_folder",
]
