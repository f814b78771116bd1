"""Pruned decoding (METHOD §2-4) against stock and masked references."""

import pytest
import torch
from conftest import assert_close, assert_equals_per_head_reference, generated_with_masked_reference
from earliest_press import KeepEarliest
from earliest_stage import KeepEarliestRows

import lvprune
from lvprune import LVPrunerModel, PLPHPPress, load_pruned_model, pruning, unprune
from lvprune.core import attention
from lvprune.families.tiny import IMAGE_TOKEN_ID, make_batch, tiny_llava

# Random tiny models may otherwise generate the image placeholder, which a re-run prompt could not hold.
GREEDY = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, suppress_tokens=[IMAGE_TOKEN_ID])


def test_nothing_pruned_generates_the_stock_tokens(stock, base, pruner, mixed_batch, pruned):
    reference = stock.generate(**mixed_batch, **GREEDY)
    assert torch.equal(pruned().generate(**mixed_batch, **GREEDY), reference)
    unprune(base)
    assert torch.equal(pruned(pruner, keep_ratios=[1, 1, 1]).generate(**mixed_batch, **GREEDY), reference)
    unprune(base)
    assert torch.equal(base.generate(**mixed_batch, **GREEDY), reference), "unprune must restore the stock model"


def test_sampling_with_nothing_pruned_matches_stock(stock, base, pruner, mixed_batch, pruned):
    sample = dict(max_new_tokens=4, do_sample=True, top_k=5, pad_token_id=0)
    torch.manual_seed(7)
    reference = stock.generate(**mixed_batch, **sample)
    torch.manual_seed(7)
    assert torch.equal(pruned(pruner, keep_ratios=[1, 1, 1]).generate(**mixed_batch, **sample), reference)


@pytest.mark.parametrize("method", ["lvpruning", "plphp", "both"])
def test_a_right_padded_batch_is_refused_and_a_left_padded_one_gives_the_stock_logits(
        stock, base, pruner, pruned, method):
    """Nothing pruned: a left-padded batch gives the stock logits at every real position; a right-padded one
    is refused (its rows would come back re-laid, at other positions than the input's)."""
    kwargs = {"press": PLPHPPress(r=1.0, delta_r=0.0)} if method != "lvpruning" else {}
    if method != "plphp":
        kwargs.update(pruner=pruner, keep_ratios=[1, 1, 1])
    model = pruned(**kwargs)
    left = make_batch(base.config, [1, 2, 0], [5, 7, 6], padding_side="left")
    right = make_batch(base.config, [1, 2, 0], [5, 7, 6], padding_side="right")
    with torch.no_grad():
        real = left["attention_mask"].bool()
        assert_close(model(**left).logits[real], stock(**left).logits[real], 1e-5, "left-padded logits")
        with pytest.raises(ValueError, match="takes left-padded batches.*padding_side = 'left'"):
            model(**right)
        with pytest.raises(ValueError, match="takes left-padded batches"):
            model.generate(**right, **GREEDY)
    assert right["attention_mask"][:, -1].eq(0).any(), "the batch must be right-padded to test the refusal"


def stage_pruner(name, pruner, base):
    """The trained LVPruning pruner, or the trivial stage pruner of tests/earliest_stage.py at the same stages."""
    if name == "lvpruning":
        return pruner
    return KeepEarliestRows.for_base(base.config, pruner.config.after_layers, pruner.config.keep_ratios)


@pytest.mark.parametrize("ratios", [[0.5, 0.3, 0.1], [0.6, 0.4, 0.2]])
@pytest.mark.parametrize("which", ["lvpruning", "keep-earliest-rows"])
def test_removal_equals_masking(base, pruner, mixed_batch, pruned, ratios, which):
    """Removal equals the masked training forward, for any stage pruner (one row each)."""
    pruner = stage_pruner(which, pruner, base)
    masked_logits, masked_ids = generated_with_masked_reference(base, pruner, mixed_batch, ratios, steps=4)
    model = pruned(pruner, keep_ratios=ratios)
    with torch.no_grad():
        logits = model(**mixed_batch).logits[:, -1]
    assert_close(logits, masked_logits, 1e-4, "last prompt logits")
    generated = model.generate(**mixed_batch, **{**GREEDY, "max_new_tokens": 4})
    assert torch.equal(generated, masked_ids)
    vision = [stats.vision_tokens for stats in model.pruning_stats.layers]
    n_vision = (mixed_batch["input_ids"] == base.config.image_token_id).sum(-1)
    expected = [n_vision.tolist()] + [torch.round(n_vision * r).long().tolist() for r in ratios]
    assert vision == expected


def test_kept_tokens_keep_their_unpruned_rotary_positions(base, pruner, mixed_batch, pruned):
    model = pruned(pruner)
    positions = []
    rotary = base.model.language_model.rotary_emb
    handle = rotary.register_forward_hook(lambda m, args, kwargs, out: positions.append(kwargs.get("position_ids", args[1] if len(args) > 1 else None)), with_kwargs=True)
    try:
        out = model.generate(**mixed_batch, max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    finally:
        handle.remove()
    state = out.past_key_values.state
    mask = mixed_batch["attention_mask"]
    unpruned = (mask.cumsum(-1) - 1).clamp(min=0)  # generate's positions for a left-padded prompt
    order = state.rows.order[:, 0]  # original index of every row kept after the last stage
    cos, sin = state.position_embeddings
    reference_cos, reference_sin = rotary(cos, unpruned.gather(1, order))
    assert_close(cos, reference_cos, 1e-6, "kept rows' cos")
    assert_close(sin, reference_sin, 1e-6, "kept rows' sin")
    lengths = mask.sum(-1)
    for step, ids in enumerate(positions[1:]):  # decode steps continue from the unpruned prompt length
        assert torch.equal(ids[:, -1], lengths + step)
    assert out.past_key_values.get_seq_length() == mask.shape[1] + 2


@pytest.mark.parametrize("press", [
    PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2, start_layer=1),
    PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2, start_layer=1, allocation="batch"),
    PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2, start_layer=1, queries="all"),
    KeepEarliest(fraction=0.5, start_layer=1),
], ids=["plphp", "plphp-batch", "plphp-all-queries", "keep-earliest"])
def test_press_equals_per_head_masked_reference(stock, base, pruner, mixed_batch, pruned, press):
    model = pruned(None, press=press)
    decode = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    out = model.generate(**mixed_batch, **decode, output_logits=True, return_dict_in_generate=True)
    stats = model.pruning_stats
    assert stats.layers[2].kept_per_head != [[stats.layers[2].vision_tokens[b]] * 2 for b in range(3)]
    unprune(base)
    assert_equals_per_head_reference(out, stock, mixed_batch, press.start_layer, **decode)


def test_kv_cache_bytes_are_the_held_tensors_and_shrink_below_35_percent():
    # 64 vision tokens per image; 12 layers, since layer 1 always holds every token and weighs 1 / depth.
    model = tiny_llava(seed=2, num_layers=12, image_size=32)
    config = lvprune.LVPrunerConfig.from_base_config(model.config, num_heads=4)
    torch.manual_seed(0)
    pruner = LVPrunerModel(config)
    batch = make_batch(model.config, [2, 1], [12, 9], seed=5)
    pruned_model = load_pruned_model(model, pruner, keep_ratios=[0.5, 0.3, 0.1], press=PLPHPPress(0.4, 0.3))
    out = pruned_model.generate(**batch, max_new_tokens=1, do_sample=False, pad_token_id=0,
                                return_dict_in_generate=True)
    stats = pruned_model.pruning_stats
    cache = out.past_key_values
    prompt_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert stats.kv_cache_bytes == prompt_bytes  # one-token generate: the cache is the prefill's
    heads, dim = model.config.text_config.num_key_value_heads, 64 // 4
    assert stats.kv_cache_bytes_unpruned == 2 * 12 * 2 * heads * batch["input_ids"].shape[1] * dim * 4
    assert stats.kv_cache_fraction < 0.35, stats.kv_cache_fraction
    unprune(pruned_model)


def test_text_only_sample_passes_through_unpruned(stock, base, pruner, pruned):
    batch = make_batch(base.config, [1, 0], [6, 8], seed=9)
    model = pruned(pruner, press=PLPHPPress(start_layer=1))
    with torch.no_grad():
        logits = model(**batch).logits
        valid = batch["attention_mask"][1].bool()
        alone = stock(input_ids=batch["input_ids"][1:, valid]).logits
    positions = model.pruning_stats.positions[1]
    assert positions[positions >= 0].tolist() == valid.nonzero()[:, 0].tolist()  # its padding left too
    assert_close(logits[1, positions >= 0], alone[0], 1e-5, "text-only sample")


def test_text_only_batch_generates_the_stock_tokens(stock, pruner, pruned):
    batch = make_batch(stock.config, [0, 0], [6, 8], seed=9)  # no vision token anywhere: every stage is empty
    reference = stock.generate(**batch, **GREEDY)
    assert torch.equal(pruned(pruner, press=PLPHPPress(start_layer=1)).generate(**batch, **GREEDY), reference)


def test_forward_without_cache_prunes_hidden_states_only(base, pruner, mixed_batch, pruned):
    model = pruned(pruner, press=PLPHPPress(start_layer=1))
    with torch.no_grad():
        cached = model(**mixed_batch).logits[:, -1]
        uncached = model(**mixed_batch, use_cache=False)
    assert uncached.past_key_values is None
    assert_close(uncached.logits[:, -1], cached, 1e-5, "PLPHP does not change the prefill")


def test_context_manager_restores_the_stock_model(stock, base, pruner, mixed_batch):
    with pruning(base, pruner, press=PLPHPPress()):
        pruned_tokens = base.generate(**mixed_batch, **GREEDY)
        assert base.pruning_stats.kv_cache_bytes < base.pruning_stats.kv_cache_bytes_unpruned
    assert torch.equal(base.generate(**mixed_batch, **GREEDY), stock.generate(**mixed_batch, **GREEDY))
    assert base.config.get_text_config()._attn_implementation == "sdpa"
    assert pruned_tokens.shape[1] == mixed_batch["input_ids"].shape[1] + GREEDY["max_new_tokens"]


def test_bad_inputs_fail_clearly(base, pruner, tmp_path):
    other = LVPrunerModel(lvprune.LVPrunerConfig.from_base_config(tiny_llava(num_layers=6).config, num_heads=4))
    with pytest.raises(ValueError, match="built for 6 decoder layers"):
        load_pruned_model(base, other)
    with pytest.raises(ValueError, match="non-increasing"):
        load_pruned_model(base, pruner, keep_ratios=[0.3, 0.5, 0.1])
    with pytest.raises(ValueError, match="one entry per stage"):
        load_pruned_model(base, pruner, keep_ratios=[0.5])
    with pytest.raises(ValueError, match="keep_ratios needs a pruner"):
        load_pruned_model(base, None, keep_ratios=[0.5, 0.3, 0.1])
    with pytest.raises(TypeError, match="PLPHPPress"):
        load_pruned_model(base, press=(0.4, 0.3))
    with pytest.raises(ValueError, match="not pruned"):
        unprune(base)
    model = load_pruned_model(base, pruner)
    try:
        with pytest.raises(RuntimeError, match="already pruned"):
            load_pruned_model(base, pruner)
        with pytest.raises(ValueError, match="beam search"):
            model.generate(**make_batch(base.config, [1], [4]), max_new_tokens=2, num_beams=2, pad_token_id=0)
    finally:
        unprune(base)


def test_loads_base_and_pruner_from_folders(stock, pruner, mixed_batch, tmp_path):
    stock.save_pretrained(tmp_path / "base")
    pruner.save_pretrained(tmp_path / "pruner")
    model = load_pruned_model(tmp_path / "base", str(tmp_path / "pruner"), keep_ratios=[0.6, 0.4, 0.2])
    with lvprune.pruning(tiny_llava(seed=0), pruner, keep_ratios=[0.6, 0.4, 0.2]) as handle:
        expected = handle.model.generate(**mixed_batch, **GREEDY)
    assert torch.equal(model.generate(**mixed_batch, **GREEDY), expected)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_unpadded_prompt_runs_causal_attention_and_matches_references(pruner, impl, monkeypatch):
    """A prompt without padding needs no mask: SDPA's causal kernel, and the same tokens and logits."""
    model = tiny_llava(seed=0)
    batch = make_batch(model.config, [1], [7], seed=3)
    masked_logits, masked_ids = generated_with_masked_reference(model, pruner, batch, [0.5, 0.3, 0.1], steps=3)
    model.set_attn_implementation(impl)
    stock_ids = model.generate(**batch, **GREEDY)
    causal_flags = []
    forward = attention.sdpa_attention_forward

    def spy(*args, **kwargs):
        causal_flags.append(kwargs["is_causal"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    with pruning(model):
        assert torch.equal(model.generate(**batch, **GREEDY), stock_ids)
    with pruning(model, pruner, keep_ratios=[0.5, 0.3, 0.1], press=PLPHPPress(0.4, 0.3, start_layer=1)):
        with torch.no_grad():
            logits = model(**batch, use_cache=True).logits[:, -1]  # PLPHP prunes the cache, not the prefill
    assert_close(logits, masked_logits, 1e-4, "last prompt logits")
    with pruning(model, pruner, keep_ratios=[0.5, 0.3, 0.1]):
        assert torch.equal(model.generate(**batch, **{**GREEDY, "max_new_tokens": 3}), masked_ids)
    layers = model.config.text_config.num_hidden_layers
    if impl == "sdpa":  # every prefill layer is causal; a decode step (one query) passes the cache's mask
        assert causal_flags[:layers] == [True] * layers and causal_flags[-layers:] == [False] * layers
    else:
        assert causal_flags == []


def test_a_press_keeps_what_its_override_points_choose(base, mixed_batch, pruned):
    """KeepEarliest (tests/earliest_press.py) keeps, per head, the earliest ceil(n / 2) vision tokens."""
    model = pruned(None, press=KeepEarliest(fraction=0.5, start_layer=1))
    out = model.generate(**mixed_batch, max_new_tokens=1, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    state = lvprune.core.contract.output_cache(out).state
    vision = (mixed_batch["input_ids"] == base.config.image_token_id) & mixed_batch["attention_mask"].bool()
    for layer, slots in enumerate(state.slots[1:], start=1):
        for b in range(vision.shape[0]):
            positions = vision[b].nonzero()[:, 0]
            earliest = positions[: -(-len(positions) // 2)].tolist()
            for head in range(slots.order.shape[1]):
                kept = slots.order[b, head][slots.vision[b, head] & slots.valid[b, head]]
                assert sorted(kept.tolist()) == earliest, (layer, b, head)


def test_all_queries_rank_each_heads_slots_by_the_attention_they_receive(stock, base, mixed_batch, pruned):
    """PLPHP(queries="all") keeps, per KV head, the vision slots with the most attention averaged over the real
    prompt queries: the reference is the stock eager model's own attention probabilities."""
    press = PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2, start_layer=1, queries="all")
    model = pruned(None, press=press)
    with torch.no_grad():
        out = model(**mixed_batch, use_cache=True)
    state = lvprune.core.contract.output_cache(out).state
    unprune(base)
    eager = tiny_llava(seed=0)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**mixed_batch, output_attentions=True).attentions  # per layer [B, Hq, Q, K]
    real = mixed_batch["attention_mask"].bool()
    vision = (mixed_batch["input_ids"] == IMAGE_TOKEN_ID) & real
    groups = eager.config.text_config.num_attention_heads // eager.config.text_config.num_key_value_heads
    checked, dropped = 0, False
    for layer in range(press.start_layer, len(attentions)):
        probs = attentions[layer].float()
        observed = (probs * real[:, None, :, None]).sum(2) / real.sum(-1)[:, None, None]  # [B, Hq, K]
        observed = observed.unflatten(1, (-1, groups)).mean(2)  # [B, Hkv, K]
        slots = state.slots[layer]
        for b in range(vision.shape[0]):
            for h in range(observed.shape[1]):
                kept = {int(o) for o, v, ok in zip(slots.order[b, h], slots.vision[b, h], slots.valid[b, h]) if v and ok}
                if not vision[b].any():
                    continue
                candidates = vision[b].nonzero()[:, 0].tolist()
                best = sorted(candidates, key=lambda j: -observed[b, h, j].item())[: len(kept)]
                last = int(real[b].nonzero().max())
                assert kept == set(best) or (last in kept and kept - {last} <= set(best)), (layer, b, h)
                checked += 1
                dropped |= len(kept) < len(candidates)
    assert checked > 0 and dropped, "some head must have dropped vision slots"


@pytest.mark.parametrize("queries", ["last", "all", "expected"])
def test_a_follow_up_on_a_cache_pressed_for_the_last_question_warns(base, mixed_batch, pruned, queries):
    """A second turn served from a cache pressed by the last prompt token's attention warns, naming the option
    that suits a chat; the same cache pressed by every prompt query does not."""
    import warnings

    from lvprune.core.contract import cache_kwarg, output_cache

    model = pruned(press=PLPHPPress(r=0.5, delta_r=0.3, start_layer=1, queries=queries))
    follow_up = torch.randint(3, 20, (3, 4))
    with torch.no_grad():
        out = model(**mixed_batch, use_cache=True)
        ids = torch.cat([mixed_batch["input_ids"], follow_up], 1)
        mask = torch.cat([mixed_batch["attention_mask"], torch.ones_like(follow_up)], 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(input_ids=ids, attention_mask=mask, **{cache_kwarg(model): output_cache(out)},
                           **GREEDY)
    said = [str(w.message) for w in caught if "now takes new prompt tokens" in str(w.message)]
    assert len(said) == (1 if queries == "last" else 0), said
    if said:
        assert "PLPHPPress(queries='last')" in said[0] and "press with queries='expected'" in said[0]
