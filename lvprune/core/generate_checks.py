"""The `generate()` contract of a pruned model: the settings it cannot honour are refused before it starts.

A pruned prefill removes vision rows and shrinks each layer's cache per head, and every decode step reads that
cache. Settings that re-run the prefill, cut it in pieces, preallocate the cache or reorder it would give other
answers than the default cached call; each is named here with what to do instead.
"""

from __future__ import annotations

REFUSED = {  # option -> (refused when, why and what to do instead)
    "use_cache": (lambda v: v is False,
                  "generate(use_cache=False) re-runs the prefill at every step: LVPruning would decide again with the "
                  "generated tokens as decision keys, and PLPHP would have no cache to prune. Leave use_cache at "
                  "its default (True)."),
    "cache_implementation": (lambda v: v not in (None, "dynamic"),
                             "cache_implementation={!r} preallocates a cache of one length for every layer; a pruned "
                             "model keeps its own cache, whose layers hold different numbers of tokens. Drop "
                             "cache_implementation (or set it to 'dynamic')."),
    "prefill_chunk_size": (bool,
                           "prefill_chunk_size splits the prompt into chunks, and the pruner would see only the "
                           "first chunk as the prompt. Drop prefill_chunk_size: pruning already cuts the prefill."),
    "num_beams": (lambda v: v is not None and v > 1,
                  "beam search reorders the cache, which a pruned cache cannot be; use greedy or sampling "
                  "(num_beams=1)."),
    **{name: (lambda v: v is not None,
              f"assisted decoding ({name}) crops and re-batches the cache, which a pruned cache cannot be; use "
              "greedy or sampling generation.")
       for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")},
}


def check_generate(model, kwargs: dict) -> None:
    """Raise ValueError, naming the option, for a `generate(**kwargs)` call a pruned `model` would get wrong.

    Each setting is read from the call, else from its `generation_config`, else from the model's. (A cache that
    is not lvprune's kind is refused by the model's first forward, before anything is generated.)
    """
    configs = [c for c in (kwargs.get("generation_config"), model.generation_config) if c is not None]
    for name, (refused, why) in REFUSED.items():
        value = kwargs[name] if name in kwargs else next((getattr(c, name) for c in configs if hasattr(c, name)), None)
        if refused(value):
            raise ValueError(f"lvprune: {why.format(value)}")


class CheckedGenerate:
    """`model.generate` while lvprune is attached: the stock method, after `check_generate`. `read_call`, where
    given, sees the call's keyword inputs first: `generate` may run the vision tower before the model's first
    forward (transformers >= 5.2x encodes images up front), so a pruner whose hooks sit on the tower and need an
    input the tower is not given (LLaVA-NeXT's `image_sizes`) reads it here."""

    def __init__(self, model, read_call=None):
        self.model, self.stock, self.read_call = model, model.generate, read_call

    def __call__(self, *args, **kwargs):
        check_generate(self.model, kwargs)
        if self.read_call is not None:
            self.read_call(kwargs)
        return self.stock(*args, **kwargs)
