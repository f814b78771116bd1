"""DivPrune and PyramidDrop against independent re-derivations of their official rules, on stock transformers.

Each reference is written from the official code (vbdi/divprune `DivPrune`; Cooperx521/PyramidDrop
`pdrop_rank_drop`), one prompt at a time, on the stock model's own modules: it shares no code with lvprune. The
kept vision positions must be the same.
"""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import lvprune
from lvprune import DivPrunePruner, PyramidDropPruner
from lvprune.families.tiny import IMAGE_TOKEN_ID, make_batch, tiny_llava


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=5)


def prompts(config):
    """Single prompts (no padding): one image, two images, an image at the very end."""
    batch = make_batch(config, [1, 2], [5, 7], padding_side="left", seed=7)
    singles = []
    for b in range(2):
        valid = batch["attention_mask"][b].bool()
        first = 0 if b == 0 else 1
        singles.append({"input_ids": batch["input_ids"][b:b + 1, valid],
                        "attention_mask": torch.ones(1, int(valid.sum()), dtype=torch.long),
                        "pixel_values": batch["pixel_values"][first:first + b + 1]})
    return singles


def input_embeddings(model, prompt):
    """The merged input embeddings, as the stock LLaVA builds them: [N, C]."""
    ids = prompt["input_ids"]
    embeds = model.model.language_model.embed_tokens(ids)
    features = model.model.get_image_features(pixel_values=prompt["pixel_values"], return_dict=True).pooler_output
    mask = (ids == IMAGE_TOKEN_ID)[..., None].expand_as(embeds)
    return embeds.masked_scatter(mask, torch.cat(features).to(embeds.dtype))[0]


def kept_vision_positions(model, pruner, prompt, ratios):
    with torch.no_grad(), lvprune.pruning(model, pruner, keep_ratios=ratios):
        model(**prompt)
        positions = model.pruning_stats.positions[0]
    vision = (prompt["input_ids"][0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
    return sorted(set(positions.tolist()) & set(vision.tolist()))


# ------------------------------------------------------------------------------------------------ DivPrune


def official_divprune(features: torch.Tensor, ratio: float) -> list[int]:
    """vbdi/divprune `DivPrune`, as written there (index_select of the chosen rows, min over them, argmax)."""
    norm = features / features.norm(dim=1, keepdim=True)
    cosine = 1.0 - norm @ norm.t()
    terms = int(round(ratio * features.shape[0]))
    s = torch.empty(terms, dtype=torch.long)
    for i in range(terms):
        m2 = cosine if i == 0 else torch.index_select(cosine, 0, s[:i])
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :] if i == 0 else torch.min(m2, dim=0).values
        s[i] = torch.argmax(scores)
    return s.tolist()


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.1])
def test_divprune_keeps_the_official_rules_tokens(llava, ratio):
    for prompt in prompts(llava.config):
        with torch.no_grad():
            embeds = input_embeddings(llava, prompt)
        vision = (prompt["input_ids"][0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
        chosen = official_divprune(embeds[vision].float(), ratio)
        assert len(set(chosen)) == len(chosen)  # no repeat here: the official rule and lvprune's agree exactly
        expected = sorted(vision[chosen].tolist())
        assert kept_vision_positions(llava, DivPrunePruner(llava.config, keep_ratio=ratio), prompt, [ratio]) == expected


def test_divprune_prunes_before_the_first_layer(llava):
    prompt = prompts(llava.config)[0]
    with torch.no_grad(), lvprune.pruning(llava, DivPrunePruner(llava.config, keep_ratio=0.25)):
        llava(**prompt, use_cache=True)
        stats = llava.pruning_stats
    n = int((prompt["input_ids"] == IMAGE_TOKEN_ID).sum())
    assert [layer.vision_tokens for layer in stats.layers] == [[round(0.25 * n)]] * len(stats.layers)


def test_a_stage_before_the_first_layer_keeps_the_cache_length_logical(llava):
    """The cache reports the positions seen, not the rows layer 0 keeps: generated tokens continue from there."""
    prompt = prompts(llava.config)[0]
    with torch.no_grad(), lvprune.pruning(llava, DivPrunePruner(llava.config, keep_ratio=0.25)):
        out = llava(**prompt, use_cache=True)
    assert out.past_key_values.get_seq_length() == prompt["input_ids"].shape[1]
    assert out.past_key_values.layers[0].keys.shape[-2] < prompt["input_ids"].shape[1]


# ------------------------------------------------------------------------------------------------ PyramidDrop


def official_pdrop_forward(model, prompt, after_layers, ratios) -> list[int]:
    """The stock layers run one by one on one prompt; before layer `after` (1-based stage), PyramidDrop's rank:
    that layer's input norm, q/k projections and RoPE, the last token's query against every key (causal softmax
    in float32), the mean over heads, the top `round(ratio × N)` image tokens. Kept rows keep their positions."""
    lm = model.model.language_model
    hidden = input_embeddings(model, prompt)[None]
    positions = torch.arange(hidden.shape[1])[None]
    image = prompt["input_ids"][0] == IMAGE_TOKEN_ID
    n_image = int(image.sum())
    for index, layer in enumerate(lm.layers):
        if index in after_layers:
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            shape = (1, hidden.shape[1], -1, attn.head_dim)
            query = attn.q_proj(normed).view(shape).transpose(1, 2)
            key = attn.k_proj(normed).view(shape).transpose(1, 2)
            cos, sin = lm.rotary_emb(normed, positions)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            key = repeat_kv(key, attn.num_key_value_groups)
            logits = query[:, :, -1:] @ key.transpose(2, 3) / math.sqrt(attn.head_dim)
            weights = logits.softmax(-1, dtype=torch.float32)
            score = weights.mean(1)[0, 0][image]  # the last token sees every row: no mask needed
            keep_image = score.topk(round(ratios[after_layers.index(index)] * n_image)).indices.sort().values
            rows = torch.cat([(~image).nonzero()[:, 0], image.nonzero()[:, 0][keep_image]]).sort().values
            hidden, positions, image = hidden[:, rows], positions[:, rows], image[rows]
        cos, sin = lm.rotary_emb(hidden, positions)
        n = hidden.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return positions[0][image].tolist()


def test_pdrop_keeps_the_official_rules_tokens(llava):
    ratios = [0.5, 0.25, 0.125]
    pruner = PyramidDropPruner.for_base(llava.config)
    assert pruner.config.after_layers == (1, 2, 3)  # the paper's 8/16/24 of 32, on 4 layers
    for prompt in prompts(llava.config):
        with torch.no_grad():
            expected = official_pdrop_forward(llava, prompt, list(pruner.config.after_layers), ratios)
        assert kept_vision_positions(llava, pruner, prompt, ratios) == expected


def test_pdrop_ranks_by_the_next_layer_not_the_stage_layer(llava):
    """PyramidDrop's ranking is the next layer's attention; FastV's, read inside the stage layer, differs."""
    prompt = prompts(llava.config)[1]
    pdrop = PyramidDropPruner.for_base(llava.config, after_layers=[1], keep_ratios=[0.25])
    fastv = lvprune.FastVPruner(llava.config, after_layer=1, keep_ratio=0.25)
    assert kept_vision_positions(llava, pdrop, prompt, [0.25]) != kept_vision_positions(llava, fastv, prompt, [0.25])


def test_pdrop_needs_room_for_its_stages():
    from lvprune.methods.pyramid_drop import scaled_layers

    assert scaled_layers(32) == (8, 16, 24) and scaled_layers(28) == (7, 14, 21) and scaled_layers(4) == (1, 2, 3)
    with pytest.raises(ValueError, match="no room"):
        scaled_layers(2)
