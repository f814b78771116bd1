"""FastV: after decoder layer K, keep the vision tokens the last prompt token attends to most in layer K.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", ECCV 2024, https://arxiv.org/abs/2403.06764; official code pkunlp-icler/FastV, its forked
`modeling_llama.py` (`LlamaModel.forward`, the `use_fast_v` branch: at layer K, the last query's attention row,
mean over heads, top R of the image tokens). A stage pruner
(`lvprune.core.protocols.StagePruner`) that only replaces LVPruning's scores: the core's counts, the protected
last prompt token and the row removal are shared. It declares `attention_layers = (K - 1,)`, so the pruning
state records that layer's last-query attention row and passes it to `forward` as `attention` [B, V].

    with lvprune.pruning(model, FastVPruner(model.config, after_layer=2, keep_ratio=0.1)):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch

from lvprune.core.protocols import StagePruner
from lvprune.core.stages import StageSchedule


class FastVPruner(StagePruner):
    """FastV: one stage after 1-based decoder layer `after_layer`, keeping `round(keep_ratio × n_vision)`
    vision tokens ranked by the last prompt token's attention in that layer (mean over heads).

    FastV's paper prunes after layer K = 2; its kept count is a free parameter, here matched to the
    method it is compared with.
    """

    def __init__(self, base_config, after_layer: int = 2, keep_ratio: float = 0.1):
        super().__init__(StageSchedule.for_base(base_config, [after_layer], [keep_ratio]))
        self.attention_layers = (after_layer - 1,)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        if attention is None:
            raise RuntimeError("FastVPruner needs the stage layer's attention: run it through lvprune.pruning().")
        return self.as_gamma(attention)
