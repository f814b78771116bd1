"""Token bookkeeping: which tokens a layer's hidden rows or KV cache hold, and where they came from.

Every tensor is batch-first and rectangular. Samples that keep fewer tokens than the widest one are padded
with *filler* slots on the left (so the last prompt token stays last) and fillers are marked invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class TokenSlots:
    """What the slots of a hidden-state or KV tensor are.

    order:  [B, h, K] long, index of the token in the unpruned (padded) sequence; causality compares these.
    valid:  [B, h, K] bool, a real token (not padding, not a filler slot).
    vision: [B, h, K] bool, a vision token.
    `h` is 1 when all heads hold the same tokens, else the number of KV heads (per-head pruning).
    """

    order: torch.Tensor
    valid: torch.Tensor
    vision: torch.Tensor

    @classmethod
    def from_sequence(cls, valid: torch.Tensor, vision: torch.Tensor) -> "TokenSlots":
        """Slots of an unpruned sequence: valid, vision [B, N] bool."""
        order = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
        return cls(order[:, None], valid[:, None], vision[:, None])

    @property
    def num_heads(self) -> int:
        return self.order.shape[1]

    @cached_property
    def all_valid(self) -> bool:
        """Every slot is a real token: no padding, no filler (one host sync per slots, unless `known_valid`)."""
        return bool(self.valid.all())

    def known_valid(self, all_valid: bool) -> "TokenSlots":
        """Record `all_valid` where the caller knows it from host-side counts, sparing the sync."""
        self.__dict__["all_valid"] = all_valid
        return self

    def append(self, order: torch.Tensor, valid: torch.Tensor) -> "TokenSlots":
        """Add new (non-vision) tokens at the end: order, valid [B, q]."""
        heads = self.num_heads
        new = [t[:, None, :].expand(-1, heads, -1) for t in (order, valid, torch.zeros_like(valid))]
        return TokenSlots(*(torch.cat([old, add], dim=-1) for old, add in zip(self.fields(), new)))

    def gather(self, index: torch.Tensor, real: torch.Tensor) -> "TokenSlots":
        """Slots `index` [B, h', K'] (h broadcast from 1 if needed); `real` [B, h', K'] False marks fillers."""
        heads = index.shape[1]
        order, valid, vision = (t.expand(-1, heads, -1).gather(-1, index) for t in self.fields())
        return TokenSlots(order, valid & real, vision & real)

    def fields(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.order, self.valid, self.vision

    def allowed(self, query_order: torch.Tensor) -> torch.Tensor:
        """Which keys each query may see: causal by original order, valid keys, and always itself.

        query_order [B, Q] -> [B, h, Q, K] bool. Seeing itself keeps padding and filler rows finite.
        """
        keys = self.order[:, :, None, :]
        queries = query_order[:, None, :, None]
        return (self.valid[:, :, None, :] & (keys <= queries)) | (keys == queries)


def compact(keep: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that gather the kept slots of each row, in order, left-filled to the widest row.

    keep [B, h, K] bool -> index [B, h, K'] long, real [B, h, K'] bool with K' = max kept count (`width`, when
    the caller knows it: reading it from the device is a host sync). Filler slots point at dropped slots
    (distinct from every kept one) and have `real == False`.
    """
    kept = keep.sum(-1, keepdim=True)  # [B, h, 1]
    width = int(kept.max()) if width is None else width
    fillers = width - kept  # filler slots each row needs on its left
    kept_rank, dropped_rank = keep.cumsum(-1) - 1, (~keep).cumsum(-1) - 1
    # Kept slots go right, in order; the first `fillers` dropped slots go left, in order; the rest to a spare
    # column that is cut off. Counting and one scatter, not a sort: sorting is the slow part on a CPU.
    target = torch.where(keep, fillers + kept_rank, torch.where(dropped_rank < fillers, dropped_rank, width))
    slots = torch.arange(keep.shape[-1], device=keep.device).expand_as(keep)
    index = torch.zeros(*keep.shape[:-1], width + 1, dtype=torch.long, device=keep.device)
    index = index.scatter_(-1, target, slots)[..., :width]
    return index, keep.gather(-1, index)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` [B, K'] of x [B, K, ...] (x may have batch 1: it is broadcast)."""
    if x.shape[0] == 1:
        return x[0].index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[2:])
    return take(x, index)


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Slots `index` [*lead, K'] of x [*lead, K, ...] along its dim `index.dim() - 1` -> [*lead, K', ...].

    One `index_select` over the flattened leading dims: on a CPU it copies whole rows and is several times
    faster than `gather` with an index expanded over the trailing dims.
    """
    lead = index.dim() - 1
    width = x.shape[lead]
    offsets = torch.arange(math.prod(index.shape[:-1]), device=index.device).view(index.shape[:-1] + (1,)) * width
    flat = x.reshape(-1, *x.shape[lead + 1:])
    return flat.index_select(0, (index + offsets).reshape(-1)).view(*index.shape, *x.shape[lead + 1:])
