"""PyramidDrop: at several stages inside the language model, keep the vision tokens the last instruction token
would attend to most in the next layer.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction", CVPR 2025, https://arxiv.org/abs/2410.17247; official code Cooperx521/PyramidDrop,
`modeling_llama_pdrop.py` (`LlamaModel.pdrop_rank_drop`): before layer `rank_layer`, the rows entering it go
through that layer's `input_layernorm`, `q_proj`, `k_proj` and rotary embedding; the last instruction token's
query (at inference, the prompt's last token) attends to every key under the causal mask, softmax in float32,
mean over heads; the image tokens with the highest attention are kept, `ratio_{s+1} × N` of the image's `N`
(the ratios cumulative: 0.5, 0.25, 0.125 after layers 8, 16, 24 of 32).

A stage pruner (`lvprune.core.protocols.StagePruner`) that reads the core's `next_attention`: the same one-query
attention, computed by the next layer's own attention module (so each family's projections, norms and rotary
embedding are its own). Where this differs from the official code:
- kept tokens keep their original positions (the official code renumbers the rows it keeps), as every stage
  pruner here does;
- the count is the core's `round(ratio × n)` where the official code takes `int(ratio × N)` (the same at its
  ratios on LLaVA-1.5's 576 tokens).

    with lvprune.pruning(model, PyramidDropPruner.for_base(model.config)):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch

from lvprune.core.protocols import StagePruner
from lvprune.core.stages import StageSchedule

PAPER_LAYERS = (8, 16, 24)  # of 32
PAPER_RATIOS = (0.5, 0.25, 0.125)


def scaled_layers(num_layers: int, paper_layers=PAPER_LAYERS, paper_depth: int = 32) -> tuple[int, ...]:
    """The paper's stage layers scaled to a model of `num_layers` decoder layers (strictly increasing, each in
    [1, num_layers − 1])."""
    layers = []
    for layer in paper_layers:
        scaled = max(round(layer * num_layers / paper_depth), layers[-1] + 1 if layers else 1)
        layers.append(min(scaled, num_layers - 1))
    if len(set(layers)) != len(layers):
        raise ValueError(f"a {num_layers}-layer model has no room for {len(paper_layers)} PyramidDrop stages.")
    return tuple(layers)


class PyramidDropPruner(StagePruner):
    """PyramidDrop: stages after `after_layers` (1-based) keeping cumulative `keep_ratios` of the vision tokens,
    ranked by the last prompt token's attention in the layer each stage precedes (mean over heads)."""

    inputs = ("next_attention",)

    @classmethod
    def for_base(cls, base_config, after_layers=None, keep_ratios=PAPER_RATIOS) -> "PyramidDropPruner":
        """At the paper's layers scaled to the base's depth unless `after_layers` is given."""
        depth = getattr(base_config, "text_config", base_config).num_hidden_layers
        layers = tuple(after_layers) if after_layers is not None else scaled_layers(depth)[:len(keep_ratios)]
        return cls(StageSchedule(layers, tuple(keep_ratios), depth))

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                next_attention: torch.Tensor | None = None, **_) -> torch.Tensor:
        if next_attention is None:
            raise RuntimeError("PyramidDropPruner needs the core's next_attention: run it through lvprune.pruning().")
        return self.as_gamma(next_attention)
