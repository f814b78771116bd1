"""Turning decision-module scores into keep/prune decisions (paper eqs 5-6 for training, 13 for inference)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F


def keep_score(gamma: torch.Tensor, rank_by: str) -> torch.Tensor:
    """Ranking score of each vision token: gamma [..., 2] (keep, remove) logits -> [...]."""
    if rank_by == "keep_logit":
        return gamma[..., 0]
    return gamma[..., 0] - gamma[..., 1]


def sample_decisions(gamma: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard Gumbel-softmax decisions with straight-through gradients: gamma [B, V, 2] -> D [B, V] in {0, 1}."""
    return F.gumbel_softmax(gamma.float(), tau=tau, hard=True)[..., 0]


def keep_counts(num_vision: list[int], ratio: float) -> list[int]:
    """Tokens kept at a stage, `round(ratio × |I_V|)` per sample (halves to even), on the host: the widths of the
    stage follow from them without reading the device."""
    return [round(n * ratio) for n in num_vision]


def ceil_count(rate: float, n: int) -> int:
    """`ceil(rate × n)` with the rate exact as written (`Fraction("0.4")` is 2/5), as a cache press that keeps a
    rate of each head's vision slots counts them (PLPHP): for analytic estimates, on the host."""
    return math.ceil(Fraction(repr(rate)) * n)


def topk_decisions(score: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor,
                   most: int | None = None) -> torch.Tensor:
    """Keep the `counts[b]` best candidates of each sample (paper eq. 13).

    score [B, V] float, candidates [B, V] bool (tokens still present), counts [B] long -> D [B, V] float {0, 1};
    `most`: `counts.max()` when the caller knows it (see `top_counts`).
    """
    return top_counts(score.float().masked_fill(~candidates, float("-inf")), counts, most).float() * candidates


def top_counts(score: torch.Tensor, counts: torch.Tensor, most: int | None = None) -> torch.Tensor:
    """The `counts[b]` highest entries of each row of sample b: score [B, ..., K], counts [B] -> [B, ..., K] bool.

    `topk` of the largest count (`most`, when the caller knows it: reading it from the device is a host sync)
    and a scatter, rather than ranking every entry with two sorts.
    """
    if most is None:
        most = int(counts.max()) if counts.numel() else 0
    width = min(most, score.shape[-1])
    chosen = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if width <= 0:
        return chosen
    index = score.topk(width, dim=-1).indices  # [B, ..., width], best first
    wanted = torch.arange(width, device=score.device) < counts.view(-1, *(1,) * (score.dim() - 1))
    return chosen.scatter_(-1, index, wanted.expand_as(index))
