"""`PrunedCache`: a `DynamicCache` whose layers may hold different (pruned) numbers of tokens."""

from __future__ import annotations

import torch

from lvprune.core.contract import DynamicCache, cache_layers
from lvprune.core.token_slots import take


class PrunedCache(DynamicCache):
    """KV cache of a pruned call: layer `l` holds `[B, kv_heads, n_l, head_dim]`, `n_l` ≤ the sequence length.

    `get_seq_length()` reports the *logical* (unpruned) length, so generated tokens get the positions they
    would have in the stock model. The pruning bookkeeping of the call lives in `state`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logical_length = 0
        self.state = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == 0:  # the positions seen, not the rows layer 0 keeps (a stage after layer 0 prunes them)
            seen = self.state.seen if self.state is not None else self.logical_length + key_states.shape[-2]
            self.logical_length = seen
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.logical_length

    def keep_slots(self, layer_idx: int, index: torch.Tensor) -> None:
        """Keep slots `index` [B, kv_heads, K'] of layer `layer_idx` (each head its own)."""
        layer = cache_layers(self)[layer_idx]
        layer.keys, layer.values = take(layer.keys, index), take(layer.values, index)

    def nbytes(self) -> int:
        """Bytes of the key and value tensors actually held."""
        return sum(t.nbytes for layer in cache_layers(self) for t in (layer.keys, layer.values) if t is not None)

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError(
            "a pruned KV cache cannot be reordered, cropped or re-batched (beam search, assisted decoding); "
            "use greedy or sampling generation."
        )

    reorder_cache = crop = batch_select_indices = _unsupported
