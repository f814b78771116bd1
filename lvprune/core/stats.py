"""`PruningStats`: what a pruned prefill kept, layer by layer, and what its KV cache weighs.

The prefill only keeps its slots and a press's per-sample tensors; the figures are computed and read to the
host the first time one is asked for, so a served model that never looks pays neither work nor a host sync.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property

import torch

from lvprune.core.contract import cache_layers


@dataclass
class LayerStats:
    """One decoder layer after prefill; lists hold one entry per sample.

    vision_tokens: vision tokens present in the layer's input (after LVPruning's removals).
    kept_per_head: vision tokens each KV head keeps in the cache, [B][kv_heads].
    width: hidden rows the layer computed on, for the whole batch (the widest sample's real rows, the others
        left-filled).
    cache_width: slots each KV head of the layer's cache holds, for the whole batch.
    extras: the cache press's own figures for the layer, by name, one entry per sample (`CachePress.describe`;
        PLPHP's: `plphp_class`, `plphp_rate`, `vision_attention`); empty where no press acted on the layer.
    """

    vision_tokens: list[int]
    kept_per_head: list[list[int]]
    width: int = 0
    cache_width: int = 0
    extras: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        if name in _MOVED_TO_EXTRAS:  # the fields of lvprune 0.1, now a press's extras
            warnings.warn(f"LayerStats.{name} is deprecated: read layer.extras.get({name!r}).", FutureWarning,
                          stacklevel=2)
            return self.__dict__.get("extras", {}).get(name)
        raise AttributeError(name)


_MOVED_TO_EXTRAS = ("plphp_class", "plphp_rate", "vision_attention")


class PruningStats:
    """What one pruned prefill kept.

    layers: one `LayerStats` per decoder layer.
    kv_cache_bytes: K/V bytes actually held after the prefill (the batch's rectangular cache).
    kv_cache_bytes_per_prompt: what the same prompts would hold run one by one (each its own widest head per
        layer): the part of `kv_cache_bytes` above it is the price of batching samples that keep different counts.
    kv_cache_bytes_unpruned: what the stock cache would hold for the same batch.
    positions: [B, K'] long, the original (padded) prompt position of each row of the returned logits; -1 for
        the filler rows that left-fill samples keeping fewer rows than the widest.
    """

    def __init__(self, state):
        # The prefill's slots and figures, kept as they are: everything is computed on first read.
        self._rows, self._slots = state.rows, list(state.slots)
        self._extras, self._widths = state.layer_stats, list(state.widths)
        self._press = state.press
        self.kv_cache_bytes = self.kv_cache_bytes_unpruned = self._slot_bytes = 0
        if state.cache is not None:
            self._measure_cache(state)

    def _measure_cache(self, state) -> None:
        """The cache's bytes, from its tensors' shapes (no device work)."""
        filled = cache_layers(state.cache)
        if not filled or filled[0].keys is None:
            # The model filled another cache than lvprune's: its cache keyword has changed (lvprune.core.contract).
            raise RuntimeError("the model did not fill lvprune's KV cache; this transformers release passes the "
                               "cache under a name lvprune.core.contract does not know.")
        batch, kv_heads, _, head_dim = filled[0].keys.shape
        self._slot_bytes = 2 * kv_heads * head_dim * filled[0].keys.element_size()  # K and V, all heads
        self.kv_cache_bytes = state.cache.nbytes()
        self.kv_cache_bytes_unpruned = len(self._slots) * batch * state.seen * self._slot_bytes

    @cached_property
    def positions(self) -> torch.Tensor:
        return torch.where(self._rows.valid[:, 0], self._rows.order[:, 0], -1)

    @cached_property
    def kv_cache_bytes_per_prompt(self) -> int:
        # Alone, a sample's cache is as wide as its widest head: real slots only, no fillers.
        slots = sum(int(slots.valid.sum(-1).amax(-1).sum()) for slots in self._slots) if self._slot_bytes else 0
        return slots * self._slot_bytes

    @cached_property
    def layers(self) -> list[LayerStats]:
        return [_layer(slots, extra, width, self._press)
                for slots, extra, width in zip(self._slots, self._extras, self._widths)]

    @property
    def kv_cache_fraction(self) -> float:
        return self.kv_cache_bytes / max(self.kv_cache_bytes_unpruned, 1)

    def __repr__(self) -> str:
        return (f"PruningStats(kv_cache_bytes={self.kv_cache_bytes}, kv_cache_bytes_per_prompt="
                f"{self.kv_cache_bytes_per_prompt}, kv_cache_bytes_unpruned={self.kv_cache_bytes_unpruned}, "
                f"layers={self.layers})")


def _layer(slots, figures: dict, width: int, press) -> LayerStats:
    """A layer's figures: a press's own (`figures`), else counted from the layer's slots."""
    figures = dict(figures)
    vision_tokens, kept_per_head = figures.pop("vision_tokens", None), figures.pop("kept_per_head", None)
    if kept_per_head is None:
        kept_per_head = (slots.vision & slots.valid).sum(-1)  # [B, h]
        vision_tokens = kept_per_head.amax(-1)
    extras = press.describe(figures) if figures else {}
    return LayerStats(vision_tokens.tolist(), kept_per_head.tolist(), width, slots.order.shape[-1], extras)
