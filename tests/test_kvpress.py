"""kvpress's scorers as lvprune presses (lvprune.methods.kvpress): the slots kept are the ones kvpress's own
`score` ranks highest on the stock model's layers, and decoding from the pressed cache equals the per-head
masked reference."""

import pytest
import torch

pytest.importorskip("kvpress")
from conftest import assert_equals_per_head_reference
from kvpress import (
    ExpectedAttentionPress,
    KnormPress,
    ObservedAttentionPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)

from lvprune import unprune
from lvprune.core.contract import attention_module, decoder_layers, rotary_embedding
from lvprune.families.tiny import make_batch
from lvprune.methods.kvpress import KVPressScorer, _WithRotary, scorer

SCORERS = {
    "knorm": lambda ratio: KnormPress(compression_ratio=ratio),
    "snapkv": lambda ratio: SnapKVPress(compression_ratio=ratio, window_size=4, kernel_size=3),
    "tova": lambda ratio: TOVAPress(compression_ratio=ratio),
    "expected": lambda ratio: ExpectedAttentionPress(compression_ratio=ratio, n_future_positions=32, n_sink=2),
    "streaming": lambda ratio: StreamingLLMPress(compression_ratio=ratio, n_sink=2),
}


@pytest.fixture(scope="module")
def single(base):
    """One unpadded prompt: kvpress's scorers read the last rows as the window, with no padding mask."""
    return make_batch(base.config, [2], [8], seed=11)


def stock_layer_inputs(model, batch):
    """Per layer: the attention module's (hidden_states, kwargs) and the cache's keys and values, from the stock
    model's prefill."""
    captured = {}
    handles = [attention_module(layer).register_forward_pre_hook(
        lambda m, args, kwargs, i=i: captured.__setitem__(i, (kwargs["hidden_states"], dict(kwargs))), with_kwargs=True)
        for i, layer in enumerate(decoder_layers(model))]
    try:
        with torch.no_grad():
            cache = model(**batch, use_cache=True).past_key_values
    finally:
        for handle in handles:
            handle.remove()
    return {i: (*captured[i], layer.keys, layer.values) for i, layer in enumerate(cache.layers)}


# StreamingLLM restricted to vision slots scores all but its pruned block alike: which tie wins is topk's.
@pytest.mark.parametrize("name,scope", [(name, scope) for scope in ("vision", "all") for name in SCORERS
                                        if (name, scope) != ("streaming", "vision")])
def test_each_head_keeps_the_slots_kvpress_scores_highest(stock, base, single, pruned, name, scope):
    scorer = SCORERS[name](0.6)
    model = pruned(None, press=KVPressScorer(scorer, scope=scope, start_layer=1))
    with torch.no_grad():
        state = model(**single, use_cache=True).past_key_values.state
    inputs = stock_layer_inputs(stock, single)
    vision = (single["input_ids"][0] == base.config.image_token_id)
    n = vision.numel()
    for layer in range(1, len(inputs)):
        hidden, kwargs, keys, values = inputs[layer]
        module = _WithRotary(attention_module(decoder_layers(stock)[layer]), rotary_embedding(stock))
        scores = scorer.score(module, hidden, keys, values, None, kwargs)[0]  # [Hkv, N]
        slots = state.slots[layer]
        for head in range(scores.shape[0]):
            kept = set(slots.order[0, head][slots.valid[0, head]].tolist())
            if scope == "vision":
                candidates = vision.nonzero()[:, 0]
                count = max(1, int(len(candidates) * 0.4))
                best = candidates[scores[head, candidates].topk(count).indices]
                expected = set(best.tolist()) | set((~vision).nonzero()[:, 0].tolist())
            else:
                ranked = scores[head].clone()
                ranked[n - 1] = float("inf")  # the last prompt token is always kept
                expected = set(ranked.topk(max(1, int(n * 0.4))).indices.tolist())
            assert kept == expected, (name, scope, layer, head)


@pytest.mark.parametrize("press", [
    KVPressScorer(KnormPress(compression_ratio=0.5), start_layer=1),
    KVPressScorer(SnapKVPress(compression_ratio=0.6, window_size=4, kernel_size=3), scope="all", start_layer=1),
    KVPressScorer(ExpectedAttentionPress(compression_ratio=0.7, n_future_positions=32, n_sink=2), start_layer=1),
], ids=["knorm-vision", "snapkv-all", "expected-vision"])
def test_decoding_from_the_pressed_cache_equals_the_per_head_masked_reference(stock, base, single, pruned, press):
    model = pruned(None, press=press)
    decode = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    out = model.generate(**single, **decode, output_logits=True, return_dict_in_generate=True)
    unprune(base)
    assert_equals_per_head_reference(out, stock, single, press.start_layer, **decode)


def test_scorers_that_need_attention_weights_and_bad_scopes_are_refused():
    with pytest.raises(ValueError, match="eager attention weights"):
        KVPressScorer(ObservedAttentionPress(compression_ratio=0.5))
    with pytest.raises(ValueError, match="scope"):
        KVPressScorer(KnormPress(compression_ratio=0.5), scope="text")
    with pytest.raises(TypeError, match="ScorerPress"):
        KVPressScorer(object())
    with pytest.raises(ValueError, match="unknown kvpress scorer 'h2o'; choose from snapkv"):
        scorer("h2o", 0.5)


def test_named_scorers_are_kvpress_classes_with_their_settings():
    snapkv = scorer("snapkv", 0.25)
    assert isinstance(snapkv, SnapKVPress) and (snapkv.compression_ratio, snapkv.window_size) == (0.25, 16)
