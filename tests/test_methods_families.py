"""The conformance matrix: every registered method x every supported family x both attention implementations.

On a left-padded batch of a one-image, a two-image and a text-only prompt, for tiny random models of each
family (`lvprune.families`, built from config): every method keeping everything generates the stock tokens; a
stage pruner's removal equals the masked training forward; every cache press equals an independent per-head
masked reference; LVPruning with PLPHP keeps LVPruning's prefill and PLPHP's exact per-head counts. A new family
(a module in `lvprune/families/`) or a new method (a file in `lvprune/methods/`, registered) joins the matrix by
being registered.
"""

import math

import pytest
import torch
from conftest import PLACEHOLDERS, assert_close, assert_equals_per_head_reference, generated_with_masked_reference
from transformers import AutoConfig, Gemma3Config

import lvprune
from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPPress, unprune
from lvprune.families import backbone_for, supported
from lvprune.families.tiny import family_batch, tiny_model
from lvprune.methods import METHODS, build

FAMILIES = sorted(supported())
ATTENTION = ("sdpa", "eager")
GREEDY = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, suppress_tokens=list(PLACEHOLDERS))
RATIOS = [0.5, 0.3, 0.1]
PLPHP = PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2, start_layer=1)
_MODELS = {}


def models(model_type, attn):
    """(stock, base, pruner, batch) of a family, made once per session; `base` is the copy tests attach to."""
    key = (model_type, attn)
    if key not in _MODELS:
        stock, base = tiny_model(model_type, attn=attn), tiny_model(model_type, attn=attn)
        torch.manual_seed(1)
        pruner = LVPrunerModel(LVPrunerConfig.from_base_config(base.config, num_heads=4)).eval()
        _MODELS[key] = stock, base, pruner, family_batch(stock, [1, 2, 0], [5, 7, 6])
    return _MODELS[key]


@pytest.fixture(params=[(t, a) for t in FAMILIES for a in ATTENTION], ids=lambda p: f"{p[0]}-{p[1]}")
def family(request):
    stock, base, pruner, batch = models(*request.param)
    yield stock, base, pruner, batch
    if getattr(base, "lvprune", None) is not None:
        unprune(base)


def test_the_matrix_covers_every_registered_family():
    assert FAMILIES == ["internvl", "llava", "llava_next", "llava_onevision", "mistral3", "qwen2_5_vl", "qwen2_vl"]
    for model_type in FAMILIES:
        assert backbone_for(supported()[model_type].tiny_config()).model_types[0] == model_type


def test_the_batch_holds_vision_tokens_as_the_stock_model_counts_them(family):
    stock, _, _, batch = family
    backbone = backbone_for(stock.config)
    vision = torch.isin(batch["input_ids"], torch.tensor(backbone.vision_token_ids(stock.config)))
    counts = vision.sum(-1).tolist()
    assert counts[0] > 0 and counts[1] == 2 * counts[0] and counts[2] == 0
    with torch.no_grad():  # the stock forward accepts it: placeholders and features agree
        stock(**batch)


STAGE_METHODS = sorted(name for name, method in METHODS.items() if method.kind == "stage")
PRESS_METHODS = sorted(name for name, method in METHODS.items() if method.kind == "press")


def stage_method(name, base, pruner, keep_all=False):
    """Registered stage pruner `name` for `base` and the ratios to run it at (1.0 everywhere with `keep_all`)."""
    if name == "fastv":
        made, ratios = build(name, base.config, after_layer=1, keep_ratio=0.25), [0.25]
    elif name == "divprune":
        made, ratios = build(name, base.config, keep_ratio=0.3), [0.3]
    elif name == "visionzip":
        if base.config.model_type not in ("llava", "llava_next"):
            pytest.skip("VisionZip needs a CLIP tower's CLS token (LLaVA-1.5, -NeXT); the refusal: test_visionzip.py")
        made, ratios = build(name, base.config, keep_ratio=0.5), [0.5]
    elif name == "pdrop":
        made, ratios = build(name, base.config), [0.5, 0.25, 0.125]
    elif name == "dart":
        made, ratios = build(name, base.config, after_layer=2, keep_ratio=0.5, pivot_image=2, pivot_text=2), [0.5]
    elif name == "random":
        made = build(name, base.config, after_layers=pruner.config.after_layers, keep_ratios=RATIOS, seed=3)
        ratios = RATIOS
    else:
        made, ratios = build(name, base.config, pruner=pruner), RATIOS
    return made, [1.0] * len(ratios) if keep_all else ratios


def press_method(name, keep_all=False):
    """Registered cache press `name`, pressing from layer 1 (keeping every slot with `keep_all`)."""
    if name == "kvpress":
        pytest.importorskip("kvpress")
        return build(name, None, scorer="knorm", compression_ratio=0.0 if keep_all else 0.5, start_layer=1)
    return build(name, None, r=1.0, delta_r=0.0, start_layer=1) if keep_all else PLPHP


def test_the_matrix_covers_every_registered_method():
    assert set(STAGE_METHODS) | set(PRESS_METHODS) == set(METHODS)
    assert STAGE_METHODS == ["dart", "divprune", "fastv", "lvpruning", "pdrop", "random", "visionzip"]
    assert PRESS_METHODS == ["kvpress", "plphp"]


@pytest.mark.parametrize("method", ["nothing", "lvpruning+plphp"] + STAGE_METHODS + PRESS_METHODS)
def test_keeping_everything_generates_the_stock_tokens(family, method):
    stock, base, pruner, batch = family
    with torch.no_grad():
        reference_logits = stock(**batch).logits
    reference = stock.generate(**batch, **GREEDY)
    if method == "nothing":
        lvprune.Pruning(base).attach()
    elif method == "lvpruning+plphp":
        lvprune.Pruning(base, pruner, keep_ratios=[1, 1, 1], press=press_method("plphp", keep_all=True)).attach()
    elif method in STAGE_METHODS:
        made, ratios = stage_method(method, base, pruner, keep_all=True)
        lvprune.Pruning(base, made, keep_ratios=ratios).attach()
    else:
        lvprune.Pruning(base, press=press_method(method, keep_all=True)).attach()
    with torch.no_grad():
        logits = base(**batch).logits
    real = batch["attention_mask"].bool()  # padding rows leave at the first stage: their logits are not kept
    assert_close(logits[real], reference_logits[real], 2e-5, "logits of the real rows with nothing pruned")
    assert torch.equal(base.generate(**batch, **GREEDY), reference)


@pytest.mark.parametrize("method", STAGE_METHODS)
def test_stage_removal_equals_masking(family, method):
    _, base, pruner, batch = family
    made, ratios = stage_method(method, base, pruner)
    # The masked reference re-runs the whole sequence per generated token: random draws anew, and FastV and
    # PyramidDrop rank by the newest row's attention instead of the last prompt token's, so for them it is a
    # reference of the prefill.
    steps = 1 if method in ("random", "fastv", "pdrop", "dart") else 4
    masked_logits, masked_ids = generated_with_masked_reference(base, made, batch, ratios, steps=steps)
    lvprune.Pruning(base, made, keep_ratios=ratios).attach()
    # Positions as `generate` and the reference number them (from the attention mask): DART's key norms are not
    # shift-invariant under RoPE, as attention is.
    mask = batch["attention_mask"]
    positions = {} if backbone_for(base.config).token_inputs else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        logits = base(**batch, **positions).logits[:, -1]
    assert_close(logits, masked_logits, 1e-4, "last prompt logits")
    if steps > 1:  # up to each sample's end of sequence: after it `generate` pads, the reference goes on
        generated, eos = base.generate(**batch, **GREEDY), base.generation_config.eos_token_id
        ended = torch.isin(generated[:, batch["input_ids"].shape[1]:], torch.tensor(eos if eos is not None else []))
        after = torch.nn.functional.pad(ended.cumsum(-1) - ended.long(), (batch["input_ids"].shape[1], 0)) > 0
        assert torch.equal(generated.masked_fill(after, -1), masked_ids.masked_fill(after, -1))
    vision = [layer.vision_tokens for layer in base.pruning_stats.layers]
    placeholders = torch.tensor(backbone_for(base.config).vision_token_ids(base.config))
    present = torch.isin(batch["input_ids"], placeholders).sum(-1).tolist()
    counts = getattr(made, "stage_counts", lambda ns, r: [round(n * r) for n in ns])(present, ratios[-1])
    assert vision[-1] == counts, "the last stage keeps round(rho * n), or the method's own count"


@pytest.mark.parametrize("method", PRESS_METHODS)
def test_press_equals_the_per_head_masked_reference(family, method):
    stock, base, _, batch = family
    press = press_method(method)
    lvprune.Pruning(base, press=press).attach()
    out = base.generate(**batch, **GREEDY, output_logits=True, return_dict_in_generate=True)
    unprune(base)
    assert_equals_per_head_reference(out, stock, batch, press.start_layer, **GREEDY)


def test_both_keep_lvprunings_prefill_and_plphps_exact_counts(family):
    _, base, pruner, batch = family
    masked_logits, _ = generated_with_masked_reference(base, pruner, batch, RATIOS, steps=1)
    lvprune.Pruning(base, pruner, keep_ratios=RATIOS, press=PLPHP).attach()
    out = base.generate(**batch, **GREEDY, output_logits=True, return_dict_in_generate=True)
    assert_close(out.logits[0], masked_logits, 1e-4, "first token logits (PLPHP acts after the prefill)")
    stats = base.pruning_stats
    rates = {PLPHP.r + PLPHP.delta_r, PLPHP.r, PLPHP.r - PLPHP.delta_r}
    for layer in stats.layers[PLPHP.start_layer:]:
        for present, heads in zip(layer.vision_tokens, layer.kept_per_head):
            allowed = {math.ceil(round(rate * present, 9)) for rate in rates}
            assert set(heads) <= allowed | {1}, f"{heads} kept of {present} (allowed {allowed})"


# ------------------------------------------------------------------------------ refusals and loading


def tiny_gemma3():
    from transformers import Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config=dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        mm_tokens_per_image=4, image_token_index=3)
    return Gemma3ForConditionalGeneration(config).eval()


def test_gemma3_and_unknown_families_are_refused_with_the_supported_list(tmp_path):
    with pytest.raises(ValueError, match="cannot prune model_type 'gemma3': Gemma 3 has sliding-window layers.*"
                                         "Supported: internvl \\(InternVL\\), llava \\(LLaVA-1.5\\)"):
        lvprune.Pruning(tiny_gemma3(), press=PLPHPPress(start_layer=0))
    text_only = AutoConfig.for_model("llama", vocab_size=96, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2)
    with pytest.raises(ValueError, match="cannot prune model_type 'llama': it is not a family lvprune has been "
                                         "tested on. Supported: .*qwen2_vl \\(Qwen2-VL\\)"):
        backbone_for(text_only)
    tiny_gemma3().save_pretrained(tmp_path / "gemma3")
    with pytest.raises(ValueError, match="model_type 'gemma3'"):  # refused from its config, before the weights
        lvprune.load_pruned_model(tmp_path / "gemma3")


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_next"])
def test_any_family_loads_through_the_auto_classes(model_type, tmp_path):
    stock, _, pruner, batch = models(model_type, "sdpa")
    stock.save_pretrained(tmp_path / "base")
    pruner.save_pretrained(tmp_path / "pruner")
    model = lvprune.load_pruned_model(tmp_path / "base", tmp_path / "pruner", press=PLPHP)
    assert type(model) is type(stock)
    ids = model.generate(**batch, **GREEDY)
    lvprune.Pruning(stock, pruner, press=PLPHP).attach()
    try:
        assert torch.equal(ids, stock.generate(**batch, **GREEDY))
    finally:
        unprune(stock)


def test_a_pruner_is_refused_by_a_base_of_another_family_of_the_same_size():
    qwen2, qwen2_5 = tiny_model("qwen2_vl"), tiny_model("qwen2_5_vl")
    pruner = LVPrunerModel(LVPrunerConfig.from_base_config(qwen2.config, num_heads=4))
    assert pruner.config.base_model_type == "qwen2_vl"
    with pytest.raises(ValueError, match="pruner was trained on a 'qwen2_vl' model, the base is 'qwen2_5_vl'"):
        lvprune.Pruning(qwen2_5, pruner)
    lvprune.Pruning(qwen2, pruner)  # its own family is accepted


# ------------------------------------------------------------------------------ videos


def video_batch(model):
    """A left-padded batch of a prompt with a 2-frame video and a text-only prompt (Qwen2-VL, OneVision)."""
    from lvprune.families import TINY_FIRST_TEXT_ID

    config, generator = model.config, torch.Generator().manual_seed(5)
    if config.model_type.startswith("qwen2"):
        vision = config.vision_config
        grid = torch.tensor([[2, 4, 8]])  # 2 frames of 4 x 8 patches
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        inputs = {"pixel_values_videos": torch.randn(int(grid.prod()), width, generator=generator),
                  "video_grid_thw": grid}
    else:
        size = config.vision_config.image_size
        inputs = {"pixel_values_videos": torch.randn(1, 2, 3, size, size, generator=generator)}
    with torch.no_grad():  # the placeholders the stock model fills: its video features' rows
        features = model.model.get_video_features(**inputs)
    features = getattr(features, "pooler_output", features)
    tokens = features[..., 0].numel() if isinstance(features, torch.Tensor) else sum(len(f) for f in features)
    text = torch.randint(TINY_FIRST_TEXT_ID, 96, (12,), generator=generator)
    rows = [torch.cat([text[:4], torch.full((tokens,), config.video_token_id), text[4:]]), text[:6]]
    from lvprune.families.tiny import pad_rows

    batch = {**pad_rows(rows), **inputs}
    backbone = backbone_for(config)
    if backbone.token_types is not None:
        batch.update(backbone.token_types(batch["input_ids"], config))
    return batch


@pytest.mark.parametrize("model_type", [t for t in FAMILIES if supported()[t].video])
def test_video_tokens_are_pruned_as_vision_tokens(model_type):
    stock, base, pruner, _ = models(model_type, "sdpa")
    batch = video_batch(stock)
    reference = stock.generate(**batch, **GREEDY)
    with lvprune.pruning(base, pruner, keep_ratios=[1, 1, 1]):
        assert torch.equal(base.generate(**batch, **GREEDY), reference)
    masked_logits, masked_ids = generated_with_masked_reference(base, pruner, batch, RATIOS, steps=4)
    with lvprune.pruning(base, pruner, keep_ratios=RATIOS):
        assert torch.equal(base.generate(**batch, **GREEDY), masked_ids)
        present = base.pruning_stats.layers[0].vision_tokens
        assert present[0] == (batch["input_ids"][0] == stock.config.video_token_id).sum() > 0 and present[1] == 0
        assert base.pruning_stats.layers[-1].vision_tokens[0] == round(RATIOS[-1] * present[0])
