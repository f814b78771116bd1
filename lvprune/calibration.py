"""Measuring PLPHP's thresholds on a model instead of guessing them.

PLPHP's paper publishes neither `alpha`/`beta` nor the first pruned layer. `vision_attention_profile` runs
prompts through the model with a PLPHP that keeps everything and records, for every sample and layer, the
vision attention `v_l` of the last prompt token; `suggest_thresholds` turns that profile into thresholds
that split the (sample, layer) pairs into thirds: indifferent, balanced, attentive.
"""

from __future__ import annotations

import torch

from .inference import Pruning
from .plphp import PLPHPConfig

MEASURE_ALL = PLPHPConfig(r=1.0, delta_r=0.0, alpha=1.0, beta=0.0, start_layer=0)


@torch.no_grad()
def vision_attention_profile(model, batches) -> torch.Tensor:
    """v_l of every image-holding sample of `batches` (dicts of model inputs) at every layer: -> [samples, layers]."""
    rows = []
    with Pruning(model, plphp=MEASURE_ALL):
        for batch in batches:
            model(**batch)
            per_layer = [layer.vision_attention for layer in model.pruning_stats.layers]
            has_vision = torch.tensor(model.pruning_stats.layers[0].vision_tokens) > 0
            rows.append(torch.tensor(per_layer).T[has_vision])
    return torch.cat(rows)


def suggest_thresholds(profile: torch.Tensor, start_layer: int = 2) -> dict:
    """`alpha`/`beta` at the 2/3 and 1/3 quantiles of the profile's layers from `start_layer` on."""
    values = profile[:, start_layer:].flatten().float()
    beta, alpha = torch.quantile(values, torch.tensor([1 / 3, 2 / 3])).tolist()
    return dict(alpha=round(alpha, 3), beta=round(beta, 3), start_layer=start_layer,
                per_layer_mean=[round(v, 3) for v in profile.float().mean(0).tolist()])
