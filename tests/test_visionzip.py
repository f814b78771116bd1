"""VisionZip held to its official rule, re-derived here from the stock tower's own outputs.

The reference transcribes `CLIPVisionTower_VisionZip.forward` (dvlab-research/VisionZip, visionzip/clip_encoder.py)
onto the stock tower's `output_attentions` and `output_hidden_states` (eager attention) and the layer's keys
averaged over heads (`CLIPAttention_forward`'s metric, read here from `k_proj`'s output), then projects its
tokens with the stock projector. The pruned model must hand the language model exactly those tokens, at the
dominant and target patches' positions. Removal equals masking is in the methods x families matrix.
"""

import pytest
import torch

import lvprune
from lvprune.families import supported
from lvprune.families.tiny import family_batch, tiny_model
from lvprune.methods import build
from lvprune.methods.visionzip import split

CONFIG = dict(vision_layers=3, vision_feature_layer=-2, image_size=32)  # layer -2 as LLaVA-1.5; 64 patches


@pytest.fixture(scope="module")
def models():
    return tiny_model("llava", attn="eager", **CONFIG), tiny_model("llava", **CONFIG)


def tower_outputs(model, pixel_values):
    """The stock tower's feature layer on [T, 3, H, W] tiles: attention weights [T, H, 1 + N, 1 + N], hidden
    states [T, 1 + N, C] and the keys averaged over heads [T, 1 + N, d] (`CLIPAttention_forward`'s metric)."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    heads = model.config.vision_config.num_attention_heads
    recorded = {}
    k_proj = tower.encoder.layers[layer].self_attn.k_proj
    handle = k_proj.register_forward_hook(lambda m, a, out: recorded.update(keys=out))
    with torch.no_grad():
        outs = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    handle.remove()
    keys = recorded["keys"]
    metric = keys.view(*keys.shape[:2], heads, -1).transpose(1, 2).mean(1)  # raw_key_states.mean(1)
    return outs.attentions[layer], outs.hidden_states[layer], metric


def official(model, pixel_values, dominant_num, contextual_num):
    """The official forward on the stock tower: (tokens [I, 1 + D + C, C], dominant patch indices [I, D],
    target patch indices [I, C]). `dominant_num` excludes the CLS token, as `apply_info` passes it."""
    return official_zip(*tower_outputs(model, pixel_values), dominant_num, contextual_num)


def official_zip(attn_weights, hidden_states, metric, dominant_num, contextual_num):
    """`CLIPVisionTower_VisionZip.forward` after its tower call, transcribed (see `official`)."""
    # ---- as in clip_encoder.py
    cls_idx = 0
    cls_attention = attn_weights[:, :, cls_idx, cls_idx + 1:]
    cls_attention_sum = cls_attention.sum(dim=1)
    topk_indices = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros((hidden_states.shape[0], 1), dtype=topk_indices.dtype), topk_indices], dim=1)
    mask = torch.ones_like(hidden_states[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(
        hidden_states.shape[0], dominant_num + 1, hidden_states.shape[2])
    metric_filtered = metric[mask].view(hidden_states.shape[0], hidden_states.shape[1] - (dominant_num + 1),
                                        metric.shape[2])
    hidden_states_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(
        hidden_states.shape[0], hidden_states.shape[1] - (dominant_num + 1), hidden_states.shape[2])
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[1] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[1], step)[:contextual_num]
    target_tokens = metric_normalized[:, target_indices, :]
    tokens_to_merge = metric_normalized[:, ~torch.isin(torch.arange(metric_normalized.shape[1]), target_indices), :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    assign_one_hot = torch.zeros(tokens_to_merge.shape[0], tokens_to_merge.shape[1], contextual_num,
                                 dtype=hidden_states_filtered.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    hidden_to_merge = hidden_states_filtered[
        :, ~torch.isin(torch.arange(hidden_states_filtered.shape[1]), target_indices), :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    target_hidden = hidden_states_filtered[:, target_indices, :]
    contextual_tokens = target_hidden + aggregated_hidden
    hidden_states_save = torch.cat([dominant_tokens, contextual_tokens], dim=1)
    # ---- patch indices (0-based, CLS excluded) of the dominant tokens, in index order, and of the targets
    dominant = all_indices[:, 1:].sort(dim=1).values - 1
    filtered = mask[:, 1:].nonzero()[:, 1].view(mask.shape[0], -1)  # patch index of each filtered token
    return hidden_states_save, dominant, filtered[:, target_indices]


def language_model_input(model, batch):
    """The rows entering the first decoder layer [B, N', C] and their prompt positions [B, N']."""
    seen = {}
    layer = lvprune.core.contract.decoder_layers(model)[0]
    handle = layer.register_forward_pre_hook(lambda m, a, kw: seen.update(h=kw.get("hidden_states", a[0] if a else None)),
                                             with_kwargs=True)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen["h"], model.pruning_stats.positions


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_the_language_model_receives_the_official_tokens_at_their_patches(models, keep_ratio):
    stock, base = models
    batch = family_batch(stock, [1, 2], [5, 7], seed=2)
    tokens = (stock.config.vision_config.image_size // stock.config.vision_config.patch_size) ** 2
    dominant, contextual = split(tokens, keep_ratio)
    assert contextual >= 1 and dominant >= 1
    saved, dominant_idx, target_idx = official(stock, batch["pixel_values"], dominant, contextual)
    with torch.no_grad():
        expected = stock.model.multi_modal_projector(saved[:, 1:])  # the CLS token has no row in a stock prompt
        plain = stock.model.multi_modal_projector(stock.model.vision_tower(
            batch["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:])
    with lvprune.pruning(base, build("visionzip", base.config, keep_ratio=keep_ratio)):
        hidden, positions = language_model_input(base, batch)
    image_id = base.config.image_token_id
    image = 0
    for b in range(2):
        placeholders = (batch["input_ids"][b] == image_id).nonzero()[:, 0]
        for block in placeholders.view(-1, tokens):  # one image's rows, in prompt order
            first = int(block[0])
            rows = ((positions[b] >= first) & (positions[b] < first + tokens)).nonzero()[:, 0]
            kept = (positions[b, rows] - first).tolist()
            assert kept == sorted(dominant_idx[image].tolist() + target_idx[image].tolist()), f"image {image}"
            want = {**dict(zip(dominant_idx[image].tolist(), expected[image, :dominant])),
                    **dict(zip(target_idx[image].tolist(), expected[image, dominant:]))}
            got = hidden[b, rows]
            torch.testing.assert_close(got, torch.stack([want[p] for p in kept]), atol=1e-5, rtol=1e-5)
            # the merge matters here: a target's row is not its plain projection
            targets = torch.tensor([kept.index(p) for p in target_idx[image].tolist()])
            assert (got[targets] - plain[image, target_idx[image]]).abs().amax() > 1e-3
            image += 1
    assert image == 3


@pytest.mark.parametrize("model_type", sorted(set(supported()) - {"llava", "llava_next"}))
def test_families_without_a_cls_tower_are_refused_with_the_reason(model_type):
    config = supported()[model_type].tiny_config()
    with pytest.raises(ValueError, match="VisionZip cannot run on this model: VisionZip ranks by the CLS token's "
                                         f"attention .*'{model_type}'"):
        build("visionzip", config)


@pytest.mark.parametrize("overrides, reason", [
    (dict(vision_feature_select_strategy="full"), "the CLS row reaches the language model too"),
    (dict(vision_feature_layer=[-2, -1]), "concatenates several"),
])
def test_llava_layouts_it_cannot_read_are_refused(overrides, reason):
    config = supported()["llava"].tiny_config(**overrides)
    with pytest.raises(ValueError, match=reason):
        build("visionzip", config)


def test_it_splits_the_budget_as_the_official_settings():
    for kept, contextual in [(64, 10), (128, 20), (192, 30)]:
        assert split(576, kept / 576) == (kept - contextual, contextual)
    assert split(576, 1 / 576) == (1, 0) and split(576, 0.0) == (0, 0)


# ------------------------------------------------------------------------------ LLaVA-NeXT: every tile zipped

NEXT_SIZES = [[16, 24], [24, 16], [16, 32]]  # (h, w): 1x2, 2x1 and 1x2 grids of 16-px tiles (4x4 patches each)


def grid_rows(size, grid_shape, side=4):
    """Where each grid patch lands in an image's packed rows, re-derived from `unpad_image`'s rule (the padding
    to the pinpoint is cut evenly from both ends of the longer side), and the rows' count: ({(tile, patch): row
    after the base tile's}, rows incl. one newline each)."""
    tiles_h, tiles_w = grid_shape
    height, width = tiles_h * side, tiles_w * side
    (h, w), top, left = size, 0, 0
    if w / h > width / height:
        top = (height - int(round(h * (width / w), 7))) // 2
    else:
        left = (width - int(round(w * (height / h), 7))) // 2
    rows, cols = height - 2 * top, width - 2 * left
    where = {}
    for r in range(top, top + rows):
        for c in range(left, left + cols):
            tile = 1 + (r // side) * tiles_w + c // side
            where[(tile, (r % side) * side + c % side)] = (r - top) * (cols + 1) + (c - left)
    return where, rows * (cols + 1)


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_llava_next_zips_each_tile_over_the_patches_that_reach_the_language_model(keep_ratio):
    stock = tiny_model("llava_next", attn="eager", vision_layers=3, vision_feature_layer=-2)
    base = tiny_model("llava_next", vision_layers=3, vision_feature_layer=-2)
    generator = torch.Generator().manual_seed(4)
    vision = {"pixel_values": torch.randn(3, 3, 3, 16, 16, generator=generator),
              "image_sizes": torch.tensor(NEXT_SIZES)}
    batch = family_batch(stock, [1, 2], [5, 7], seed=2, vision=vision)
    attn, hidden_states, metric = tower_outputs(stock, vision["pixel_values"].flatten(0, 1))
    with lvprune.pruning(base, build("visionzip", base.config, keep_ratio=keep_ratio)):
        hidden, positions = language_model_input(base, batch)
    placeholders = [(b, int(p)) for b in range(2)
                    for p in (batch["input_ids"][b] == base.config.image_token_id).nonzero()[:, 0]]
    start = 0
    for image, size in enumerate(NEXT_SIZES):
        where, grid_count = grid_rows(size, (1, 2) if size[1] > size[0] else (2, 1))
        b, first = placeholders[start]
        expected = {}  # prompt position -> the token the language model must receive there
        for tile in range(3):
            flat = image * 3 + tile
            present = list(range(16)) if tile == 0 else sorted(p for t, p in where if t == tile)
            keep = [0] + [p + 1 for p in present]  # CLS + the tile's patches with a row
            dominant, contextual = split(len(present), keep_ratio)
            saved, dominant_idx, target_idx = official_zip(attn[flat:flat + 1][:, :, keep][:, :, :, keep],
                                                           hidden_states[flat:flat + 1, keep],
                                                           metric[flat:flat + 1, keep], dominant, contextual)
            with torch.no_grad():
                tokens = stock.model.multi_modal_projector(saved[0, 1:])
            for local, token in zip(dominant_idx[0].tolist() + target_idx[0].tolist(), tokens):
                patch = present[local]
                row = patch if tile == 0 else 16 + where[(tile, patch)]
                expected[first + row] = token
        rows = ((positions[b] >= first) & (positions[b] < first + 16 + grid_count)).nonzero()[:, 0]
        assert sorted(expected) == positions[b, rows].tolist(), f"image {image}"  # newlines and the rest dropped
        torch.testing.assert_close(hidden[b, rows], torch.stack([expected[p] for p in sorted(expected)]),
                                   atol=1e-5, rtol=1e-5)
        start += 16 + grid_count
    assert start == len(placeholders)
