"""DART against an independent re-derivation of its official rule, on the stock model's own modules.

The reference is `get_retained_image_token` as the LLMC port of ZichenWen1/DART writes it (one prompt, one image
block, Python sets and all), fed with the stock layers' keys and hidden states: it shares no code with lvprune.
"""

import math

import pytest
import torch
from test_divprune_pdrop import input_embeddings, kept_vision_positions
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import lvprune
from lvprune import DARTPruner
from lvprune.families.tiny import IMAGE_TOKEN_ID, image_tokens_per_image, tiny_llava


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=5)


def one_image_prompts(config):
    """Unpadded one-image prompts with text before the image and after it (DART's text pivots)."""
    generator = torch.Generator().manual_seed(11)
    out = []
    for before, after in ((3, 6), (1, 9), (5, 12)):
        text = torch.randint(5, config.text_config.vocab_size, (before + after,), generator=generator)
        ids = torch.cat([text[:before], torch.full((image_tokens_per_image(config),), IMAGE_TOKEN_ID), text[before:]])
        size = config.vision_config.image_size
        out.append({"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                    "pixel_values": torch.randn(1, 3, size, size, generator=generator)})
    return out


def official_retained(pruning_paras, last_layer_state, any_states):
    """`get_retained_image_token` as written there (comments and names kept)."""
    image_token_start_index = pruning_paras['image_token_start_index']
    image_token_length = pruning_paras['image_token_length']
    pivot_image_token = pruning_paras['pivot_image_token']
    pivot_text_token = pruning_paras['pivot_text_token']
    reduction_ratio = pruning_paras['reduction_ratio']
    TOKEN_TOPK = math.ceil((image_token_length * (1 - reduction_ratio)) // (pivot_image_token + pivot_text_token))
    any_states = any_states.permute(0, 2, 1, 3)
    any_states = any_states.reshape(any_states.shape[0], any_states.shape[1], -1)
    k_states_image_token = any_states[0][image_token_start_index:image_token_start_index + image_token_length, :]
    k_states_query_token = any_states[0][image_token_start_index + image_token_length:, :]
    k_states_image_token_L1_norm = torch.norm(k_states_image_token, p=1, dim=-1)
    k_states_query_token_L1_norm = torch.norm(k_states_query_token, p=1, dim=-1)
    image_indices = (k_states_image_token_L1_norm.topk(pivot_image_token).indices + image_token_start_index).tolist()
    query_indices = (k_states_query_token_L1_norm.topk(pivot_text_token).indices
                     + image_token_start_index + image_token_length).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(image_token_start_index, image_token_start_index + image_token_length)) \
        - set(image_indices)
    valid_indices_list = list(valid_indices)
    for item in list(indices_set):
        valid_vectors = last_layer_state[0][valid_indices_list, :]
        cos_sim = -torch.nn.functional.cosine_similarity(last_layer_state[0][item, :], valid_vectors, dim=-1)
        top_k_indices = cos_sim.topk(TOKEN_TOPK).indices
        top_k_real_indices = [valid_indices_list[i] for i in top_k_indices]
        indices_set.update(top_k_real_indices)
        valid_indices.difference_update(top_k_real_indices)
        valid_indices_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


def stock_states(model, prompt, pruning_loc):
    """Layer `pruning_loc − 1`'s post-RoPE keys (repeated over the query heads) and the rows entering layer
    `pruning_loc` normed by the model's final norm, from the stock layers run one by one."""
    lm = model.model.language_model
    hidden = input_embeddings(model, prompt)[None]
    n = hidden.shape[1]
    positions = torch.arange(n)[None]
    cos, sin = lm.rotary_emb(hidden, positions)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    for index, layer in enumerate(lm.layers[:pruning_loc]):
        if index == pruning_loc - 1:
            attn, normed = layer.self_attn, layer.input_layernorm(hidden)
            query = attn.q_proj(normed).view(1, n, -1, attn.head_dim).transpose(1, 2)
            key = attn.k_proj(normed).view(1, n, -1, attn.head_dim).transpose(1, 2)
            key = repeat_kv(apply_rotary_pos_emb(query, key, cos, sin)[1], attn.num_key_value_groups)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return key, lm.norm(hidden)


@pytest.mark.parametrize("ratio, pivots", [(0.5, (4, 4)), (0.25, (2, 2)), (0.75, (4, 2))])
def test_dart_keeps_the_official_rules_tokens(llava, ratio, pivots):
    for prompt in one_image_prompts(llava.config):
        image = (prompt["input_ids"][0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
        paras = dict(image_token_start_index=int(image[0]), image_token_length=len(image), pivot_image_token=pivots[0],
                     pivot_text_token=pivots[1], reduction_ratio=1 - ratio)
        with torch.no_grad():
            keys, states = stock_states(llava, prompt, pruning_loc=2)
            expected = official_retained(paras, states, keys)
        pruner = DARTPruner(llava.config, after_layer=2, keep_ratio=ratio, pivot_image=pivots[0], pivot_text=pivots[1])
        assert kept_vision_positions(llava, pruner, prompt, [ratio]) == expected
        assert len(expected) == pruner.stage_counts([len(image)], ratio)[0]  # DART's count, not round(ratio × n)


def test_dart_without_the_core_is_refused(llava):
    pruner = DARTPruner(llava.config)
    with pytest.raises(RuntimeError, match="run it through lvprune.pruning"):
        pruner(0, torch.zeros(1, 4, 8), torch.zeros(1, 2, 8), torch.ones(1, 2))
    with lvprune.pruning(llava, pruner):  # and through it, it runs (the matrix holds it to masking)
        assert llava.lvprune.pruner is pruner
