"""Every way of calling a pruned model gives the reference's answer or is refused up front."""

import warnings
from fractions import Fraction
from math import ceil

import pytest
import torch
from conftest import assert_close, generated_with_masked_reference

import lvprune
from lvprune import LVPruningForTraining, PLPHPPress
from lvprune.core.selection import ceil_count
from lvprune.families.tiny import IMAGE_TOKEN_ID, image_tokens_per_image, make_batch, pad_rows, tiny_llava

GREEDY = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, suppress_tokens=[IMAGE_TOKEN_ID])


def ending_with_image(config, text_lengths, seed=3) -> dict:
    """A left-padded batch whose prompts end with an image: no text after the last vision token."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.full((image_tokens_per_image(config),), config.image_token_id)
    rows = [torch.cat([torch.randint(5, config.text_config.vocab_size, (n,), generator=generator), image])
            for n in text_lengths]
    batch = pad_rows(rows)
    size = config.vision_config.image_size
    batch["pixel_values"] = torch.randn(len(rows), 3, size, size, generator=generator)
    return batch


def real_kept_rows(batch, config, ratio) -> list[int]:
    """Rows a sample keeps alone after a stage of cumulative ratio `ratio`: its text + round(ratio × vision)."""
    vision = ((batch["input_ids"] == config.image_token_id) & batch["attention_mask"].bool()).sum(-1)
    text = batch["attention_mask"].sum(-1) - vision
    return (text + torch.round(vision.double() * ratio).long()).tolist()


# ------------------------------------------------------------------ 1. mixed batches keep only real rows


@pytest.mark.parametrize("images", [[3, 0], [3, 1], [1, 2, 0, 3]])
def test_mixed_batch_width_is_the_widest_samples_real_rows(base, pruner, pruned, images):
    batch = make_batch(base.config, images, [6 + 2 * i for i in range(len(images))], seed=4)
    ratios = [0.5, 0.3, 0.1]
    masked, _ = generated_with_masked_reference(base, pruner, batch, ratios, steps=1)
    model = pruned(pruner, keep_ratios=ratios)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    stats = model.pruning_stats
    after = pruner.config.after_layers
    for layer, layer_stats in enumerate(stats.layers):
        stage = sum(layer >= a for a in after)  # stages already run before this layer
        expected = max(real_kept_rows(batch, base.config, ratios[stage - 1])) if stage else batch["input_ids"].shape[1]
        assert layer_stats.width == expected, f"layer {layer}"
    assert stats.layers[-1].width <= max(real_kept_rows(batch, base.config, ratios[-1])) + 1  # the bound
    assert_close(logits, masked, 1e-4, "last prompt logits")


def test_mixed_batch_generates_what_each_prompt_generates_alone(base, pruner, pruned):
    images = [0, 1, 3]
    batch = make_batch(base.config, images, [6, 8, 7], seed=6)
    model = pruned(pruner, keep_ratios=[0.5, 0.3, 0.1], press=PLPHPPress(r=0.4, delta_r=0.3, start_layer=1))
    together = model.generate(**batch, **GREEDY)
    batched_bytes, per_prompt_bytes = model.pruning_stats.kv_cache_bytes, model.pruning_stats.kv_cache_bytes_per_prompt
    alone_bytes = 0
    width = batch["input_ids"].shape[1]
    for b in range(len(images)):
        valid = batch["attention_mask"][b].bool()
        first = sum(images[:b])
        single = {"input_ids": batch["input_ids"][b:b + 1, valid],
                  "attention_mask": torch.ones(1, int(valid.sum()), dtype=torch.long)}
        if images[b]:
            single["pixel_values"] = batch["pixel_values"][first:first + images[b]]
        out = model.generate(**single, **GREEDY)
        alone_bytes += model.pruning_stats.kv_cache_bytes
        assert torch.equal(out[0, single["input_ids"].shape[1]:], together[b, width:]), f"sample {b}"
    assert per_prompt_bytes == alone_bytes  # the stat is what the prompts hold run one by one
    assert batched_bytes >= per_prompt_bytes


# ------------------------------------------------------------------ 2. the last prompt token is never pruned


@pytest.mark.parametrize("ratios", [[1.0, 0.5, 0.5], [0.5, 0.3, 0.1]])
def test_prompt_ending_with_an_image_equals_masking(base, pruner, pruned, ratios):
    batch = ending_with_image(base.config, [5, 9])
    masked_logits, masked_ids = generated_with_masked_reference(base, pruner, batch, ratios, steps=4)
    model = pruned(pruner, keep_ratios=ratios)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    assert model.pruning_stats.positions[:, -1].tolist() == [batch["input_ids"].shape[1] - 1] * 2
    assert_close(logits, masked_logits, 1e-4, "last prompt logits")
    assert torch.equal(model.generate(**batch, **GREEDY), masked_ids)
    kept = [s.vision_tokens for s in model.pruning_stats.layers][-1]
    assert kept == [round(image_tokens_per_image(base.config) * ratios[-1])] * 2  # within the count


def test_plphp_keeps_the_last_prompt_token_in_every_head(base, pruned):
    batch = ending_with_image(base.config, [5, 9])
    model = pruned(None, press=PLPHPPress(r=0.1, delta_r=0.1, alpha=0.99, beta=0.98, start_layer=0))
    out = model.generate(**batch, max_new_tokens=1, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    last = batch["input_ids"].shape[1] - 1
    for layer, slots in enumerate(lvprune.core.contract.output_cache(out).state.slots):
        assert ((slots.order == last) & slots.valid).any(-1).all(), f"layer {layer} dropped the last prompt token"


# ------------------------------------------------------------------ 3. PLPHP's counts are exact


@pytest.mark.parametrize("r, delta_r, n", [(0.4, 0.3, 25), (0.2, 0.1, 25), (0.3, 0.2, 10), (0.4, 0.3, 10),
                                           (0.7, 0.3, 7)])
def test_plphp_count_is_exactly_ceil_of_rate_times_n(r, delta_r, n):
    config = PLPHPPress(r=r, delta_r=delta_r)
    exact = [min(max(Fraction(str(r)) + k * Fraction(str(delta_r)), 0), 1) for k in (-1, 0, 1)]
    counts = config.counts(torch.tensor([0, 1, 2]), torch.tensor([n, n, n]))
    assert counts.tolist() == [ceil(q * n) for q in exact]
    assert ceil_count(r, n) == ceil(Fraction(str(r)) * n)


def test_plphp_keeps_exactly_ceil_after_lvpruning():
    """0.4 × 25 = 10 exactly: after LVPruning left 25 vision tokens, each head keeps 10, not 11."""
    model = tiny_llava(seed=0, image_size=32)  # 64 vision tokens per image
    torch.manual_seed(0)
    pruner = lvprune.LVPrunerModel(lvprune.LVPrunerConfig.from_base_config(model.config, num_heads=4))
    n = image_tokens_per_image(model.config)
    batch = make_batch(model.config, [1], [6], seed=2)
    ratio = 25 / n
    plphp = PLPHPPress(r=0.4, delta_r=0.3, alpha=1.0, beta=0.0, start_layer=pruner.config.after_layers[0])
    model = lvprune.load_pruned_model(model, pruner, keep_ratios=[ratio] * 3, press=plphp)  # balanced: rate 0.4
    with torch.no_grad():
        model(**batch)
    for layer in model.pruning_stats.layers[plphp.start_layer:]:
        assert layer.vision_tokens == [25] and layer.extras["plphp_class"] == ["balanced"]
        assert layer.kept_per_head == [[10] * len(layer.kept_per_head[0])]


# ------------------------------------------------------------------ 4-6. generate() settings refused up front


@pytest.mark.parametrize("option, value, message", [
    ("cache_implementation", "static", "cache_implementation"),
    ("use_cache", False, "use_cache"),
    ("prefill_chunk_size", 8, "prefill_chunk_size"),
    ("num_beams", 2, "beam search"),
])
def test_generate_settings_a_pruned_cache_cannot_honour_are_refused(base, pruner, pruned, mixed_batch,
                                                                     option, value, message):
    model = pruned(pruner, press=PLPHPPress())
    with pytest.raises(ValueError, match=message):
        model.generate(**mixed_batch, **GREEDY, **{option: value})
    saved = getattr(model.generation_config, option)
    setattr(model.generation_config, option, value)  # the same, set on the model's generation config
    try:
        with pytest.raises(ValueError, match=message):
            model.generate(**mixed_batch, **GREEDY)
    finally:
        setattr(model.generation_config, option, saved)


def test_generate_is_the_stock_method_again_after_unprune(stock, base, pruner, mixed_batch):
    lvprune.load_pruned_model(base, pruner)
    lvprune.unprune(base)
    assert "generate" not in base.__dict__
    stock_tokens = stock.generate(**mixed_batch, **GREEDY, cache_implementation="static")
    assert torch.equal(base.generate(**mixed_batch, **GREEDY, cache_implementation="static"), stock_tokens)


# ------------------------------------------------------------------ 7. forward(labels=...)


def answer_labels(batch, answer_length=3, seed=0):
    """The prompt + a random answer of `answer_length` tokens, labelled: (batch with labels, answer start)."""
    generator = torch.Generator().manual_seed(seed)
    answer = torch.randint(5, 90, (batch["input_ids"].shape[0], answer_length), generator=generator)
    ids = torch.cat([batch["input_ids"], answer], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(answer)], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer_length:] = answer
    return {**batch, "input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("ratios", [[0.5, 0.3, 0.1], [1.0, 1.0, 1.0]])
def test_loss_over_kept_rows_equals_the_masked_reference(base, pruner, pruned, mixed_batch, ratios):
    scored = answer_labels(mixed_batch)
    positions = (scored["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    masked_pruner = lvprune.LVPrunerModel(pruner.config.__class__(**{**pruner.config.to_dict(), "keep_ratios": ratios}))
    masked_pruner.load_state_dict(pruner.state_dict())
    trainer = LVPruningForTraining(base, masked_pruner).eval()
    try:
        with torch.no_grad():
            reference = trainer(**scored, position_ids=positions).causal_loss
    finally:
        trainer.detach()
    model = pruned(pruner, keep_ratios=ratios)
    with torch.no_grad():
        out = model(**scored, position_ids=positions, use_cache=False)
    assert_close(out.loss, reference, 1e-4, "loss")
    positions = model.pruning_stats.positions
    assert out.logits.shape[1] == positions.shape[1]
    assert (positions[:, -3:] == torch.arange(scored["input_ids"].shape[1] - 3, scored["input_ids"].shape[1])).all()


def test_labels_after_a_removed_token_or_with_logits_to_keep_are_refused(base, pruner, pruned):
    batch = ending_with_image(base.config, [4, 6])
    model = pruned(pruner, keep_ratios=[0.2, 0.1, 0.05])
    # Every vision token labelled: the row before each removed one has nothing left to predict it.
    on_vision = torch.where(batch["input_ids"] == IMAGE_TOKEN_ID, 7, -100)
    with torch.no_grad(), pytest.raises(ValueError, match="labelled token follows"):
        model(**batch, labels=on_vision)
    with torch.no_grad(), pytest.raises(ValueError, match="logits_to_keep"):
        model(**answer_labels(batch), logits_to_keep=1)


# ------------------------------------------------------------------ 8. settings that would do nothing


def test_plphp_start_layer_beyond_the_model_is_refused(base):
    depth = len(lvprune.core.contract.decoder_layers(base))
    with pytest.raises(ValueError, match="start_layer"):
        lvprune.Pruning(base, press=PLPHPPress(start_layer=depth))
    lvprune.Pruning(base, press=PLPHPPress(start_layer=depth - 1))  # the last layer is fine


def test_batch_allocation_gives_every_sample_the_mean_count():
    config = PLPHPPress(r=0.4, delta_r=0.3, allocation="batch")
    cls, present = torch.tensor([0, 1, 2, 1]), torch.tensor([10, 10, 10, 0])  # the last sample has no image
    per_sample = PLPHPPress(r=0.4, delta_r=0.3).counts(cls, present)
    assert per_sample.tolist() == [1, 4, 7, 0]
    assert config.counts(cls, present).tolist() == [4, 4, 4, 0]  # ceil((1 + 4 + 7) / 3)
    assert config.counts(torch.tensor([2, 0]), torch.tensor([10, 2])).tolist() == [4, 2]  # ceil((7 + 1) / 2), capped at 2
    with pytest.raises(ValueError, match="allocation"):
        PLPHPPress(allocation="layer")


# ------------------------------------------------------------------ decode without a mask where none is needed


@pytest.mark.parametrize("plphp", [PLPHPPress(r=0.4, delta_r=0.3, start_layer=1, allocation="batch"), None])
def test_decode_over_real_tokens_only_builds_no_mask_and_matches_the_masked_path(base, pruner, plphp, monkeypatch):
    from lvprune.core.pruning_state import PruningState

    batch = make_batch(base.config, [1, 1], [7, 7], seed=8)  # equal lengths: no padding
    assert batch["attention_mask"].all()
    masks_built = []
    allowed = PruningState.allowed
    monkeypatch.setattr(PruningState, "allowed", lambda self, layer: masks_built.append(self.prefill) or allowed(self, layer))
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with lvprune.pruning(base, pruner, keep_ratios=[0.5, 0.5, 0.5], press=plphp):
        fast = base.generate(**batch, **options)
        assert not any(prefill is False for prefill in masks_built), "a decode step built a mask"
        monkeypatch.setattr(PruningState, "mask_free", lambda self, layer: self.prefill and self.causal(layer))
        masked = base.generate(**batch, **options)
    assert torch.equal(fast.sequences, masked.sequences)
    for step, (a, b) in enumerate(zip(fast.logits, masked.logits)):
        assert_close(a, b, 1e-5, f"decode step {step}")


@pytest.mark.parametrize("queries", ["last", "all"])
def test_a_cache_pressed_before_the_question_continues_as_the_stock_model(stock, base, pruned, queries):
    """The context case (kvpress's protocol): prefill the prompt up to its image with a press, then generate the
    question and the answer from that cache. Keeping every slot it is the stock model's continuation; pressing,
    the question's tokens attend to the pressed cache."""
    batch = make_batch(base.config, [1], [6], seed=1)
    ids = batch["input_ids"]
    context = int((ids[0] == base.config.image_token_id).nonzero().max()) + 1
    full = torch.cat([ids[:, :context], torch.randint(8, 96, (1, 4), generator=torch.Generator().manual_seed(2))], 1)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, suppress_tokens=[IMAGE_TOKEN_ID])
    reference = stock.generate(input_ids=full, attention_mask=torch.ones_like(full),
                               pixel_values=batch["pixel_values"], **greedy)
    kwarg = lvprune.core.contract.cache_kwarg(base)
    for r, same in ((1.0, True), (0.25, False)):
        model = pruned(press=PLPHPPress(r=r, delta_r=0.0, start_layer=0, queries=queries))
        with torch.no_grad():
            out = model(input_ids=ids[:, :context], attention_mask=torch.ones(1, context, dtype=torch.long),
                        pixel_values=batch["pixel_values"], use_cache=True)
        cache = lvprune.core.contract.output_cache(out)
        fraction = model.pruning_stats.kv_cache_fraction
        with warnings.catch_warnings():  # queries="last" warns of new prompt tokens (tests/test_pruning.py)
            warnings.filterwarnings("ignore", "this cache was pressed", UserWarning)
            generated = model.generate(input_ids=full, attention_mask=torch.ones_like(full), **{kwarg: cache},
                                       **greedy)
        assert generated.shape == reference.shape and torch.equal(generated[:, :full.shape[1]], full)
        assert (fraction == 1.0) == same
        if same:
            assert torch.equal(generated, reference)
        lvprune.unprune(base)
