"""`LVPruningForTraining`: a frozen stock LLaVA plus trainable decision modules, with masked pruning.

In `.train()` mode decisions are hard Gumbel samples with straight-through gradients (eqs 5-6); in `.eval()`
mode they are inference's deterministic top-k (eq. 13). Either way they are applied as the multiplicative
attention mask of eqs 7-9, so the sequence length never changes and batches stay rectangular.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from lvprune.core.contract import activation_checkpointing, decoder_layers
from lvprune.core.layer_hooks import STATE_KWARG, LayerHooks
from lvprune.core.pruning_state import PruningState
from lvprune.methods.lvpruning.config import LVPrunerConfig
from lvprune.methods.lvpruning.modules import LVPrunerModel


@dataclass
class LVPruningOutput(ModelOutput):
    """loss = λ_causal·causal_loss + λ_ratio·ratio_loss; keep_fractions [S] (batch mean per stage); logits [B, N, V];
    decisions: per stage, the accumulated keep mask [B, N] (1 keeps, 0 prunes; 1 at non-vision positions)."""

    loss: torch.Tensor | None = None
    causal_loss: torch.Tensor | None = None
    ratio_loss: torch.Tensor | None = None
    keep_fractions: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    decisions: tuple[torch.Tensor, ...] | None = None


def ratio_loss(fractions: torch.Tensor, targets, kind: str = "mse", delta: float = 0.5) -> torch.Tensor:
    """Eq. 11: fractions [S, B] kept per stage and sample (NaN: no vision tokens), targets [S] -> scalar.

    Averaged over the samples that have vision tokens, then over stages; 0 if no sample has any.
    """
    has_vision = ~fractions[0].isnan()
    if not has_vision.any():
        return fractions.new_zeros(())
    kept = fractions[:, has_vision]
    target = torch.as_tensor(targets, dtype=kept.dtype, device=kept.device)[:, None].expand_as(kept)
    if kind == "huber":
        return F.huber_loss(kept, target, delta=delta)
    return F.mse_loss(kept, target)


class LVPruningForTraining(nn.Module):
    """Train `pruner` on a frozen `base_model` of a supported family (`lvprune.families`).

    `forward(input_ids, attention_mask, pixel_values, labels, ...)` returns an `LVPruningOutput`; the family's
    other inputs (`image_sizes`, `image_grid_thw`, `mm_token_type_ids`, ...) pass through to the base.
    Only the pruner has `requires_grad`; the base stays in eval mode (no dropout) whatever the mode.
    """

    def __init__(self, base_model: nn.Module, pruner: LVPrunerModel):
        super().__init__()
        pruner.config.check_base(base_model.config)
        if activation_checkpointing(base_model):
            # Recomputing a stage layer in the backward pass would draw its decisions a second time.
            raise ValueError("LVPruningForTraining does not support activation (gradient) checkpointing of the base.")
        self.base_model, self.pruner = base_model, pruner
        self.base_model.requires_grad_(False)
        self.num_layers = len(decoder_layers(base_model))
        self.hooks = LayerHooks(base_model, pruner).attach()
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base_model.eval()
        return self

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs) -> LVPruningOutput:
        state = PruningState(
            input_ids, attention_mask, self.hooks.vision_ids, self.num_layers, labels=labels, pruner=self.pruner,
            sample=self.training, remove=False, base_attention=self.hooks.base_attention,
        )
        kwargs[STATE_KWARG] = state
        out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                              labels=labels, use_cache=False, **kwargs)
        fractions = torch.stack(state.keep_fractions)  # [S, B]
        config = self.pruner.config
        # Every stage runs even on a batch without images (on zero vision tokens), so each pruner parameter is
        # in the graph and data parallelism finds a gradient for each; ZeRO-3 gathers them in their own forward.
        if isinstance(config, LVPrunerConfig):
            ratio = ratio_loss(fractions, config.keep_ratios, config.ratio_loss, config.huber_delta)
            loss = None if out.loss is None else config.lambda_causal * out.loss + config.lambda_ratio * ratio
        else:  # a stage pruner without weights (FastV, random): the masked reference of its removal, untrained
            ratio, loss = None, out.loss
        return LVPruningOutput(loss=loss, causal_loss=out.loss, ratio_loss=ratio,
                               keep_fractions=fractions.nanmean(dim=1), logits=out.logits,
                               decisions=tuple(state.decisions))

    def detach(self) -> nn.Module:
        """Detach the hooks and return the stock base model."""
        self.hooks.detach()
        return self.base_model
