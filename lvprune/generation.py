"""The `generate()` contract of a pruned model: the settings it cannot honour are refused before it starts.

A pruned prefill removes vision rows and shrinks each layer's cache per head, and every decode step reads that
cache. Settings that re-run the prefill, cut it in pieces, preallocate the cache or reorder it would give other
answers than the default cached call; each is named here with what to do instead.
"""

from __future__ import annotations

from .contract import DynamicCache, pop_cache


def refusal(name: str, value) -> str | None:
    """Why `generate(name=value)` cannot run on a pruned model (None: it can)."""
    if name == "use_cache" and value is False:
        return ("generate(use_cache=False) re-runs the prefill at every step: LVPruning would decide again with "
                "the generated tokens as decision keys, and PLPHP would have no cache to prune. Leave use_cache "
                "at its default (True).")
    if name == "cache_implementation" and value not in (None, "dynamic"):
        return (f"cache_implementation={value!r} preallocates a cache of one length for every layer; a pruned "
                "model keeps its own cache, whose layers hold different numbers of tokens. Drop "
                "cache_implementation (or set it to 'dynamic').")
    if name == "prefill_chunk_size" and value:
        return ("prefill_chunk_size splits the prompt into chunks, and the pruner would see only the first chunk "
                "as the prompt. Drop prefill_chunk_size: pruning already cuts the prefill's cost.")
    if name == "num_beams" and value is not None and value > 1:
        return "beam search reorders the cache, which a pruned cache cannot be; use greedy or sampling (num_beams=1)."
    if name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit") and value is not None:
        return (f"assisted decoding ({name}) crops and re-batches the cache, which a pruned cache cannot be; "
                "use greedy or sampling generation.")
    return None


CHECKED = ("use_cache", "cache_implementation", "prefill_chunk_size", "num_beams", "assistant_model",
           "prompt_lookup_num_tokens", "assistant_early_exit")


def check_generate(model, kwargs: dict) -> None:
    """Raise ValueError, naming the option, for a `generate(**kwargs)` call a pruned `model` would get wrong.

    Each setting is read from the call, else from its `generation_config`, else from the model's.
    """
    configs = [c for c in (kwargs.get("generation_config"), model.generation_config) if c is not None]
    for name in CHECKED:
        value = kwargs[name] if name in kwargs else next((getattr(c, name) for c in configs if hasattr(c, name)), None)
        reason = refusal(name, value)
        if reason is not None:
            raise ValueError(f"lvprune: {reason}")
    cache = pop_cache(dict(kwargs))
    if cache is not None and not isinstance(cache, DynamicCache):
        raise ValueError(f"lvprune: a pruned model keeps its own cache; do not pass a {type(cache).__name__}.")


class CheckedGenerate:
    """`model.generate` while lvprune is attached: the stock method, after `check_generate`."""

    def __init__(self, model):
        self.model, self.stock = model, model.generate

    def __call__(self, *args, **kwargs):
        check_generate(self.model, kwargs)
        return self.stock(*args, **kwargs)
