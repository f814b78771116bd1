"""LVPruning: trained, language-guided vision-token pruning (METHOD §2).

Sun et al., "LVPruning: An Effective yet Simple Language-Guided Vision Token Pruning Approach for Multi-modal
Large Language Models", Findings of NAACL 2025, https://arxiv.org/abs/2501.13652.

- `config.py`: `LVPrunerConfig`, the decision modules' sizes and their stages (a stage schedule);
- `modules.py`: `LVPrunerModel`, the cross-attention decision modules (eqs 1-4), a stage pruner;
- `training_forward.py`: `LVPruningForTraining`, the frozen base with the modules and the masked training forward
  (Gumbel decisions, eqs 5-12). The trainer around it is `lvprune.training`.
"""

from lvprune.methods.lvpruning.config import LVPrunerConfig
from lvprune.methods.lvpruning.modules import LVPrunerModel
from lvprune.methods.lvpruning.training_forward import LVPruningForTraining, LVPruningOutput

__all__ = ["LVPrunerConfig", "LVPrunerModel", "LVPruningForTraining", "LVPruningOutput"]
