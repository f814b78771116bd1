"""Stage pruners: after chosen decoder layers, a stage pruner decides which vision rows leave the sequence.

The protocol LVPruning's decision modules (`LVPrunerModel`) follow, and with them the random and FastV-style
baselines (`lvprune.baselines`). A stage pruner has

- `config`: an `LVPrunerConfig` naming its stages (`after_layers`, 1-based) and their cumulative
  `keep_ratios`; each stage keeps the top `round(ratio × n_vision)` vision tokens of a sample;
- `stage_for_layer(layer_idx)`: the stage after 0-based decoder layer `layer_idx`, or None;
- `forward(stage, vision [B, V, C], text [B, T, C], text_mask [B, T], attention=None) -> γ [B, V, 2]`: the
  keep/remove scores of the vision rows still present (ranked by `γ₀ − γ₁`) from their hidden states and the
  prompt's text rows; `attention` [B, V] is the last prompt token's attention to them in the layers named by
  `attention_layers` (mean over heads), for pruners that rank by it.

Everything else (counts, the protected last prompt token, removing rows and their rotary tables, the masked
training forward, the stats) is the pruning core's. A new one is a subclass of `StagePruner` that overrides
`forward`:

    class KeepEarliest(StagePruner):
        def forward(self, stage, vision, text, text_mask, **_):
            return self.as_gamma(-torch.arange(vision.shape[1]).expand(vision.shape[:2]))
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LVPrunerConfig


class StagePruner(nn.Module):
    """Base of the stage pruners without trained weights: a pruner config and the stage lookup."""

    attention_layers: tuple[int, ...] = ()

    def __init__(self, config: LVPrunerConfig):
        super().__init__()
        self.config = config

    @classmethod
    def for_base(cls, base_config, after_layers, keep_ratios, **kwargs) -> "StagePruner":
        """A pruner for a base model's config with the given stages."""
        return cls(cls.base_config(base_config, after_layers, keep_ratios), **kwargs)

    @staticmethod
    def base_config(base_config, after_layers, keep_ratios) -> LVPrunerConfig:
        """A pruner config for a base config with the given stages (one head: there is no module to size)."""
        return LVPrunerConfig.from_base_config(base_config, after_layers=list(after_layers),
                                               keep_ratios=list(keep_ratios), num_heads=1)

    def stage_for_layer(self, layer_idx: int) -> int | None:
        """The stage that runs after 0-based decoder layer `layer_idx`, or None."""
        after = self.config.after_layers
        return after.index(layer_idx + 1) if layer_idx + 1 in after else None

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must override forward (see lvprune.stage)")

    @staticmethod
    def as_gamma(score: torch.Tensor) -> torch.Tensor:
        """Keep scores [B, V] -> γ [B, V, 2] = (score, 0), so both rankings (`γ₀ − γ₁`, `γ₀`) sort by score."""
        return torch.stack([score.float(), torch.zeros_like(score, dtype=torch.float32)], dim=-1)
