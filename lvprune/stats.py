"""`PruningStats`: what a pruned prefill kept, layer by layer, and what its KV cache weighs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .contract import cache_layers


@dataclass
class LayerStats:
    """One decoder layer after prefill; lists hold one entry per sample.

    vision_tokens: vision tokens present in the layer's input (after LVPruning's removals).
    plphp_class / plphp_rate: PLPHP's class and retention rate (None where PLPHP did not prune this layer).
    vision_attention: PLPHP's `v_l`, the last prompt token's attention on vision tokens (None likewise).
    kept_per_head: vision tokens each KV head keeps in the cache, [B][kv_heads].
    """

    vision_tokens: list[int]
    kept_per_head: list[list[int]]
    plphp_class: list[str] | None = None
    plphp_rate: list[float] | None = None
    vision_attention: list[float] | None = None


@dataclass
class PruningStats:
    """Per-layer `layers`, and `kv_cache_bytes` (K/V bytes actually held after prefill) against
    `kv_cache_bytes_unpruned` (what the stock cache would hold for the same prompt)."""

    layers: list[LayerStats] = field(default_factory=list)
    kv_cache_bytes: int = 0
    kv_cache_bytes_unpruned: int = 0

    @property
    def kv_cache_fraction(self) -> float:
        return self.kv_cache_bytes / max(self.kv_cache_bytes_unpruned, 1)

    @classmethod
    def collect(cls, state, text_config) -> "PruningStats":
        layers = [_layer(book, extra) for book, extra in zip(state.books, state.layer_stats)]
        if state.cache is None:
            return cls(layers)
        filled = cache_layers(state.cache)
        if not filled or filled[0].keys is None:
            # The model filled another cache than lvprune's: its cache keyword has changed (lvprune.contract).
            raise RuntimeError("the model did not fill lvprune's KV cache; this transformers release passes the "
                               "cache under a name lvprune.contract does not know.")
        keys = filled[0].keys
        batch, kv_heads, _, head_dim = keys.shape
        unpruned = 2 * len(state.books) * batch * kv_heads * state.seen * head_dim * keys.element_size()
        return cls(layers, state.cache.nbytes(), unpruned)


def _layer(book, extra: dict) -> LayerStats:
    if "kept_per_head" in extra:
        return LayerStats(extra["vision_tokens"].tolist(), extra["kept_per_head"].tolist(),
                          extra["plphp_class"], extra["plphp_rate"].tolist(), extra["vision_attention"].tolist())
    kept = (book.vision & book.valid).sum(-1)  # [B, h]
    return LayerStats(kept.max(-1).values.tolist(), kept.tolist())
