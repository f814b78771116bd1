"""lvprune: vision-token pruning for LLaVA-style models.

- LVPruning (trained, language-guided): `LVPrunerConfig`, `LVPrunerModel`, `LVPruningForTraining`.
- PLPHP (training-free, per-layer per-head KV pruning): `PLPHPConfig`, a `CachePress` (the base of cache presses).
- Pruned decoding on a stock model: `load_pruned_model`, `pruning` (context manager), `unprune`.
- Analytic cost of a configuration: `estimate_cost`; PLPHP threshold measurement: `vision_attention_profile`.
- Data in the LLaVA instruction format and a synthetic VQA set: `lvprune.data`.
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
