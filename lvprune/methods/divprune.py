"""DivPrune: before the language model, keep the most diverse vision tokens (greedy max-min cosine distance).

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025,
https://arxiv.org/abs/2503.02175; official code vbdi/divprune, `llava_arch.py` (`LlavaMetaForCausalLM.DivPrune`):
on the projected image features, distance `1 − cos`; the first token is the one whose nearest neighbour is
farthest (the second-smallest distance of its column), each next one the token whose smallest distance to the
tokens already chosen is largest (`argmax`, first index on ties), until `round(ratio × N)` are chosen.

A stage pruner (`lvprune.core.protocols.StagePruner`) with one stage after layer 0, so it acts on the merged input
embeddings (the projected features) before the first decoder layer. It ranks every real vision row by the step at
which the greedy rule picks it; the rule is prefix-consistent (its first k picks are the same whatever the count),
so the core's top `round(ratio × n)` is DivPrune's set. Where this differs from the official code:
- a sample's vision tokens are chosen together (one count for all its images, the core's rule); the official
  code runs per image;
- a token already chosen is never chosen again: the official code leaves chosen tokens in the argmax, where
  their distance to themselves (0 up to rounding) keeps them out unless every remaining token duplicates one;
- distances are computed in float32 whatever the model's dtype.

    with lvprune.pruning(model, DivPrunePruner(model.config, keep_ratio=0.1)):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lvprune.core.protocols import StagePruner
from lvprune.core.selection import keep_counts
from lvprune.core.stages import StageSchedule


def cosine_distances(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`1 − cos` between the rows of each sample: features [B, V, C], valid [B, V] bool -> [B, V, V] float32,
    +inf where either row is not real (so it is never a nearest neighbour)."""
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)
    pair = valid[:, :, None] & valid[:, None, :]
    return distance.masked_fill(~pair, float("inf"))


def greedy_order(distance: torch.Tensor, valid: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """The step at which DivPrune's greedy rule picks each row: distance [B, V, V] (`cosine_distances`),
    valid [B, V] -> [B, V] long, 0 for the first pick, V for rows that are not real or not picked within `steps`
    (default: every real row)."""
    batch, width = valid.shape
    order = torch.full((batch, width), width, dtype=torch.long, device=valid.device)
    rows = torch.arange(batch, device=valid.device)
    n_real = valid.sum(-1)
    # First pick: the largest distance to a nearest neighbour (second-smallest of the column: the smallest is the
    # row itself); a sample with one vision token picks it.
    if width > 1:
        nearest = distance.topk(2, dim=1, largest=False).values[:, 1]  # [B, V]
        nearest = torch.where(n_real[:, None] > 1, nearest, torch.zeros_like(nearest))
    else:
        nearest = torch.zeros(batch, width, device=valid.device)
    score = nearest.masked_fill(~valid, float("-inf"))
    closest = torch.full((batch, width), float("inf"), device=valid.device)  # min distance to the chosen set
    chosen = ~valid
    for step in range(min(int(n_real.max()), steps if steps is not None else width) if width else 0):
        pick = score.argmax(-1)  # [B]
        active = step < n_real
        order[rows[active], pick[active]] = step
        chosen = chosen | (F.one_hot(pick, width).bool() & active[:, None])
        closest = torch.minimum(closest, distance[rows, pick])
        score = closest.masked_fill(chosen, float("-inf"))
    return order


class DivPrunePruner(StagePruner):
    """DivPrune: one stage after layer 0 keeping `round(keep_ratio × n_vision)` vision tokens, the most diverse
    by greedy max-min cosine distance of their input embeddings."""

    inputs = ("vision_valid", "keep_ratio")

    def __init__(self, base_config, keep_ratio: float = 0.1):
        super().__init__(StageSchedule.for_base(base_config, [0], [keep_ratio]))

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                vision_valid: torch.Tensor | None = None, keep_ratio: float | None = None, **_) -> torch.Tensor:
        if vision_valid is None or keep_ratio is None:
            raise RuntimeError("DivPrunePruner needs the core's vision_valid and keep_ratio: run it through "
                               "lvprune.pruning().")
        # The greedy rule is sequential: pick only as many as the core keeps (its count, round(ratio × n)), not all.
        steps = max(keep_counts(vision_valid.sum(-1).tolist(), keep_ratio), default=0)
        order = greedy_order(cosine_distances(vision, vision_valid), vision_valid, steps)
        return self.as_gamma(-order.float())
