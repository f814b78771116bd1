"""`PruningStats`: what a pruned prefill kept, layer by layer, and what its KV cache weighs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .contract import cache_layers


@dataclass
class LayerStats:
    """One decoder layer after prefill; lists hold one entry per sample.

    vision_tokens: vision tokens present in the layer's input (after LVPruning's removals).
    kept_per_head: vision tokens each KV head keeps in the cache, [B][kv_heads].
    width: hidden rows the layer computed on, for the whole batch (the widest sample's real rows, the others
        left-filled).
    cache_width: slots each KV head of the layer's cache holds, for the whole batch.
    plphp_class / plphp_rate: PLPHP's class and retention rate (None where PLPHP did not prune this layer).
    vision_attention: PLPHP's `v_l`, the last prompt token's attention on vision tokens (None likewise).
    """

    vision_tokens: list[int]
    kept_per_head: list[list[int]]
    width: int = 0
    cache_width: int = 0
    plphp_class: list[str] | None = None
    plphp_rate: list[float] | None = None
    vision_attention: list[float] | None = None


@dataclass
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

    layers: list[LayerStats] = field(default_factory=list)
    kv_cache_bytes: int = 0
    kv_cache_bytes_per_prompt: int = 0
    kv_cache_bytes_unpruned: int = 0
    positions: torch.Tensor | None = None

    @property
    def kv_cache_fraction(self) -> float:
        return self.kv_cache_bytes / max(self.kv_cache_bytes_unpruned, 1)

    @classmethod
    def collect(cls, state, text_config) -> "PruningStats":
        rows = state.rows
        positions = torch.where(rows.valid[:, 0], rows.order[:, 0], -1)
        layers = [_layer(book, extra, width) for book, extra, width in zip(state.books, state.layer_stats, state.widths)]
        if state.cache is None:
            return cls(layers, positions=positions)
        filled = cache_layers(state.cache)
        if not filled or filled[0].keys is None:
            # The model filled another cache than lvprune's: its cache keyword has changed (lvprune.contract).
            raise RuntimeError("the model did not fill lvprune's KV cache; this transformers release passes the "
                               "cache under a name lvprune.contract does not know.")
        keys = filled[0].keys
        batch, kv_heads, _, head_dim = keys.shape
        slot_bytes = 2 * kv_heads * head_dim * keys.element_size()  # K and V of one slot, all heads
        unpruned = len(state.books) * batch * state.seen * slot_bytes
        # Alone, a sample's cache is as wide as its widest head: real slots only, no fillers.
        per_prompt = sum(int(book.valid.sum(-1).amax(-1).sum()) for book in state.books) * slot_bytes
        return cls(layers, state.cache.nbytes(), per_prompt, unpruned, positions)


def _layer(book, extra: dict, width: int) -> LayerStats:
    sizes = dict(width=width, cache_width=book.order.shape[-1])
    if "kept_per_head" in extra:
        return LayerStats(extra["vision_tokens"].tolist(), extra["kept_per_head"].tolist(), **sizes,
                          plphp_class=extra["plphp_class"], plphp_rate=extra["plphp_rate"].tolist(),
                          vision_attention=extra["vision_attention"].tolist())
    kept = (book.vision & book.valid).sum(-1)  # [B, h]
    return LayerStats(kept.max(-1).values.tolist(), kept.tolist(), **sizes)
