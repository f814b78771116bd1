"""Cost of a prompt: prefill FLOPs, KV-cache bytes and kept patches (batch 1); prefill and decode wall time (any batch).

FLOPs are `torch.utils.flop_counter.FlopCounterMode`'s count of one prefill forward as `generate()` runs it
(`logits_to_keep=1`, cache on). The counter has no formula for the CPU kernel of SDPA, so this module lends
it torch's own SDPA formula (full `n × n` square) through `custom_mapping`, for that count only.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lvprune.core.contract import cache_layers, output_cache
from lvprune.core.pruned_cache import PrunedCache
from lvprune.families import backbone_for, vision_mask


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's SDPA count (2 matmuls over the full square) for the CPU flash kernel's shapes."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


SDPA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def prefill(model, inputs: dict):
    """One prefill forward, as `generate()` runs it: the cache on, logits of the last position only."""
    return model(**inputs, use_cache=True, logits_to_keep=1)


@torch.no_grad()
def prefill_flops(model, inputs: dict) -> int:
    """FLOPs of one prefill of `inputs` (batch 1), decision modules and pruning bookkeeping included."""
    with FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS) as counter:
        prefill(model, inputs)
    return counter.get_total_flops()


@torch.no_grad()
def kv_cache_bytes(model, inputs: dict) -> int:
    """K/V bytes held after one prefill: `model.pruning_stats.kv_cache_bytes` when lvprune is attached,
    else the stock cache's tensors."""
    out = prefill(model, inputs)
    if getattr(model, "lvprune", None) is not None:
        return model.pruning_stats.kv_cache_bytes
    return sum(t.nbytes for layer in cache_layers(output_cache(out)) for t in (layer.keys, layer.values))


@torch.no_grad()
def kept_vision_tokens(model, inputs: dict) -> list[int]:
    """Indices (0-based, in prompt order) of the vision tokens of sample 0 still in the last layer's KV cache
    after one prefill; for per-head (PLPHP) caches, the union over heads. All of them without lvprune."""
    ids = inputs["input_ids"][0]
    positions = vision_mask(ids, backbone_for(model.config).vision_token_ids(model.config)).nonzero()[:, 0]
    cache = output_cache(prefill(model, inputs))
    if not isinstance(cache, PrunedCache):
        return list(range(len(positions)))
    slots = cache.state.slots[-1]
    kept = slots.order[0][slots.vision[0] & slots.valid[0]].unique()
    return torch.searchsorted(positions, kept).tolist()


def _fastest_ms(fn, runs: int, warmup: int = 1) -> float:
    """Wall time of the fastest of `runs` calls of `fn` after `warmup` calls, in milliseconds. On a shared
    machine other tenants only ever add time, so the fastest run is the least disturbed one."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


@torch.no_grad()
def prefill_ms(model, inputs: dict, runs: int = 5) -> float:
    """Wall time of one prefill forward, the fastest of `runs`, in milliseconds."""
    return _fastest_ms(lambda: prefill(model, inputs), runs)


@torch.no_grad()
def decode_ms_per_token(model, inputs: dict, new_tokens: int = 16, runs: int = 5) -> float:
    """Decode time per generated token: `(T(1 + new_tokens) − T(1)) / new_tokens`, where `T(n)` is the fastest
    of `runs` greedy `generate()` calls forced to produce n tokens; the prefill and the first token cancel out."""
    def run(n: int):
        return lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    longer = _fastest_ms(run(1 + new_tokens), runs)
    shorter = _fastest_ms(run(1), runs)
    return (longer - shorter) / new_tokens
