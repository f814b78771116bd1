"""Qwen2-VL and Qwen2.5-VL: dynamic resolution and M-RoPE.

An image of H x W pixels gives `(H / 14) * (W / 14) / 4` tokens (2x2 patches merged); `pixel_values` holds
every image's patches in one [patches, C * T * 14 * 14] tensor and `image_grid_thw` [images, 3] their grids.
Positions are 3-D (time, height, width) ids from `get_rope_index`, driven by `mm_token_type_ids`; the model
computes them before the decoder, so the rotary tables lvprune carries with the kept rows are already the
M-RoPE ones, and decode continues from the stored `rope_deltas` as in the stock model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from lvprune.families.base import TINY_IDS, Backbone, chatml_template, register, tiny_text
from lvprune.flops import VisionInput, encoder_layer_flops, patch_embed_flops

MROPE = {"type": "mrope", "mrope_section": [2, 3, 3]}  # 16 rotary frequencies of a 32-wide head
PATCH, MERGE, TEMPORAL = 2, 2, 2
TINY_GRID = (1, 4, 8)  # one frame of 4 x 8 patches: 8 tokens an image


def _ids():
    return {k: TINY_IDS[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                     "vision_end_token_id")}


def tiny_config(*, text=None, **overrides):
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL, in_channels=3)
    text = tiny_text(rope_scaling=MROPE, **(text or {}))
    vision["hidden_size"] = text["hidden_size"]
    return Qwen2VLConfig(text_config=text, vision_config=vision, **{**_ids(), **overrides})


def tiny_config_2_5(*, text=None, **overrides):
    text = tiny_text(rope_scaling=MROPE, **(text or {}))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=text["hidden_size"], num_heads=2,
                  patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, window_size=8,
                  fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **{**_ids(), **overrides})


def random_images(config, n: int, generator) -> dict:
    vision = config.vision_config
    grid = torch.tensor([TINY_GRID] * n)
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    return {"pixel_values": torch.randn(int(grid.prod(-1).sum()), width, generator=generator), "image_grid_thw": grid}


def token_types(input_ids, config) -> dict:
    """`mm_token_type_ids`: 1 at image tokens, 2 at video tokens, 0 elsewhere (what the processor returns)."""
    types = (input_ids == config.image_token_id).long() + 2 * (input_ids == config.video_token_id).long()
    return {"mm_token_type_ids": types}


# ------------------------------------------------------------------------------ costs (`lvprune flops`)


# Image processing the model's config.json does not hold, from the Hub's preprocessor_config.json.
QWEN_MIN_PIXELS = 56 * 56  # Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct: 3136


QWEN_MAX_PIXELS = 16384 * 28 * 28  # 12845056


def vision_cost(config: Any, size: tuple[int, int], images: int) -> VisionInput:
    """Qwen2-VL and Qwen2.5-VL: smart-resized patches, 2x2 merged; each image attends alone."""
    v = config.vision_config
    grid_h, grid_w = qwen_patch_grid(config, size)
    patches, merge = grid_h * grid_w, v.spatial_merge_size
    tokens = patches // merge**2
    if config.model_type == "qwen2_vl":
        width, intermediate, mlp, out = v.embed_dim, int(v.embed_dim * v.mlp_ratio), 2, v.hidden_size
        squares = [patches**2] * v.depth
    else:
        width, intermediate, mlp, out = v.hidden_size, v.intermediate_size, 3, v.out_hidden_size
        window = _window_square(grid_h, grid_w, merge, v.window_size // merge // v.patch_size)
        squares = [patches**2 if i in v.fullatt_block_indexes else window for i in range(v.depth)]
    conv = patch_embed_flops(patches, v.in_channels, v.temporal_patch_size * v.patch_size**2, width)
    blocks = sum(encoder_layer_flops(patches, width, intermediate, square, mlp) for square in squares)
    merged = merge**2 * width
    merger = 2 * tokens * (merged * merged + merged * out)
    return VisionInput(size, tokens, 0, patches, images * (conv + blocks), images * merger)


def qwen_patch_grid(config: Any, size: tuple[int, int]) -> tuple[int, int]:
    """14px patches down and across once the processor's ``smart_resize`` has resized the image."""
    v = config.vision_config
    height, width = _smart_resize(*size, v.patch_size * v.spatial_merge_size, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    return height // v.patch_size, width // v.patch_size


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's image processor: multiples of ``factor``, pixels in [min, max], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image_size {height}x{width}: Qwen's processor refuses aspect ratios over 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _window_square(grid_h: int, grid_w: int, merge: int, window: int) -> int:
    """Sum of L^2 over Qwen2.5-VL's attention windows: ``window`` x ``window`` merged tokens each,
    the last row and column of windows cut short by the image's edge."""
    if window < 1:
        raise ValueError("window_size is smaller than one merged token")
    rows = [min(window, grid_h // merge - i) for i in range(0, grid_h // merge, window)]
    cols = [min(window, grid_w // merge - j) for j in range(0, grid_w // merge, window)]
    return sum((r * c * merge**2) ** 2 for r in rows for c in cols)



_COMMON = dict(random_images=random_images, token_types=token_types,
               vision_token_fields=("image_token_id", "video_token_id"),
               image_inputs=("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"),
               token_inputs=("mm_token_type_ids",),
               vision_cost=vision_cost, typical_image_size=(448, 448),  # 32 x 32 patches: 256 tokens
               chat_template=chatml_template("<|vision_start|><|image_pad|><|vision_end|>",
                                             "<|vision_start|><|video_pad|><|vision_end|>",
                                             system="You are a helpful assistant."))

BACKBONE = register(Backbone(
    family="Qwen2-VL", model_types=("qwen2_vl",), tiny_config=tiny_config,
    tested_with=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"), **_COMMON,
))
BACKBONE_2_5 = register(Backbone(
    family="Qwen2.5-VL", model_types=("qwen2_5_vl",), tiny_config=tiny_config_2_5,
    tested_with=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"), **_COMMON,
))
