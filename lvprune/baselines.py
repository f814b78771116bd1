"""Baseline stage pruners (`lvprune.stage`), so they run through LVPruning's stages and counts and only replace
its scores:

- `RandomPruner`: uniform random scores (random pruning at a given schedule, e.g. LVPruning's);
- `FastVPruner`: FastV (Chen et al., 2024): after decoder layer K, keep the vision tokens the last prompt
  token attends to most in layer K (attention averaged over heads). It declares
  `attention_layers = (K - 1,)`, so the pruning state records that layer's last-query attention row and
  passes it to `forward` as `attention` [B, V].

    with lvprune.pruning(model, FastVPruner(model.config, after_layer=2, keep_ratio=0.1)):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch

from .config import LVPrunerConfig
from .stage import StagePruner


class RandomPruner(StagePruner):
    """Random pruning: every stage keeps a uniformly random subset of the vision tokens still present.

    Deterministic in `seed`: the draws come from the pruner's own generator, in call order.
    """

    def __init__(self, config: LVPrunerConfig, seed: int = 0):
        super().__init__(config)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def like(cls, pruner, keep_ratios=None, seed: int = 0) -> "RandomPruner":
        """Random pruning at `pruner`'s stages, with its ratios or `keep_ratios`."""
        old = pruner.config
        config = LVPrunerConfig(hidden_size=old.hidden_size, num_hidden_layers=old.num_hidden_layers,
                                after_layers=list(old.after_layers), num_heads=1, image_token_id=old.image_token_id,
                                keep_ratios=list(keep_ratios if keep_ratios is not None else old.keep_ratios))
        return cls(config, seed)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, **_) -> torch.Tensor:
        score = torch.rand(vision.shape[:2], generator=self.generator)
        return self.as_gamma(score.to(vision.device))


class FastVPruner(StagePruner):
    """FastV: one stage after 1-based decoder layer `after_layer`, keeping `round(keep_ratio × n_vision)`
    vision tokens ranked by the last prompt token's attention in that layer (mean over heads).

    FastV's paper prunes after layer K = 2; its kept count is a free parameter, here matched to the
    method it is compared with.
    """

    def __init__(self, base_config, after_layer: int = 2, keep_ratio: float = 0.1):
        super().__init__(self.base_config(base_config, [after_layer], [keep_ratio]))
        self.attention_layers = (after_layer - 1,)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        if attention is None:
            raise RuntimeError("FastVPruner needs the stage layer's attention: run it through lvprune.pruning().")
        return self.as_gamma(attention)
