"""Cache presses: after the prefill of each layer from `start_layer` on, a press decides which cached slots each
KV head keeps. PLPHP (`lvprune.plphp.PLPHPConfig`) is one; a new method is one subclass overriding
`vision_counts` (how many vision slots a head keeps, and the layer's figures for `pruning_stats`) and, if it
ranks otherwise, `vision_scores`:

    @dataclass(frozen=True)
    class KeepEarliest(CachePress):
        fraction: float = 0.5
        start_layer: int = 2                             # the first 0-based layer pressed

        def vision_counts(self, scores, vision):           # how many vision slots each head of sample b keeps
            return torch.ceil(vision.sum(-1)[:, 0] * self.fraction).long(), {}

        def vision_scores(self, scores, vision):           # which ones: the highest scores win
            return -torch.arange(scores.shape[-1], dtype=scores.dtype).expand_as(scores)

Text slots always stay, and so does each sample's last prompt token (it is the query that predicts, and every
generated token attends to it): the base class guarantees both, reads the counts to the host once per layer
(the widths of the new cache follow from them) and returns the layer's figures for `pruning_stats`.
"""

from __future__ import annotations

import torch

from .decisions import top_counts


class CachePress:
    """Base of the cache presses (mixed into a frozen dataclass that has a `start_layer: int` field, the first
    0-based decoder layer whose cache is pressed)."""

    start_layer: int
    # Whose attention `scores` are: "last", the last prompt token's (the prompt case), or "all", the mean over every
    # prompt query (a cache pressed before the question is known). A dataclass field where a press offers both.
    queries: str = "last"

    # ---------------------------------------------------------------- the override points

    def vision_counts(self, scores: torch.Tensor, vision: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Vision slots each KV head of sample b keeps, and the layer's own per-sample figures for `pruning_stats`
        (device tensors): scores [B, Hkv, K], vision [B, 1, K] bool -> counts [B] long, stats."""
        raise NotImplementedError

    def vision_scores(self, scores: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Per-head ranking of the slots (highest kept): [B, Hkv, K]. Default: the last prompt token's attention."""
        return scores

    # ---------------------------------------------------------------- applying a press

    def select(self, scores: torch.Tensor, slots, last: torch.Tensor) -> tuple[torch.Tensor, list[int], dict]:
        """Which slots each KV head keeps.

        scores [B, Hkv, K]: the attention per KV head of the last prompt token (or of all prompt queries, see
        `queries`); slots: the layer's `TokenSlots` (one head);
        last [B]: the original position of each sample's last prompt token. Returns keep [B, Hkv, K] bool, the
        vision slots each head of a sample keeps (a host list: the layer's one host sync) and the layer's stats.
        """
        vision = slots.vision & slots.valid  # [B, 1, K]
        counts, extra = self.vision_counts(scores, vision)
        on_host = counts.tolist()
        protected = slots.order == last[:, None, None]  # [B, 1, K]: ranked first, within the count
        ranked = self.vision_scores(scores, vision).masked_fill(protected, float("inf"))
        chosen = top_counts(ranked.masked_fill(~vision, float("-inf")), counts, max(on_host, default=0)) & vision
        keep = chosen | (slots.valid & ~slots.vision) | (protected & slots.valid)
        stats = dict(vision_tokens=vision.sum(-1)[:, 0], kept_per_head=chosen.sum(-1), **extra)
        return keep, on_host, stats
