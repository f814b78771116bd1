"""Qwen2-VL and Qwen2.5-VL: dynamic resolution and M-RoPE.

An image of H x W pixels gives `(H / 14) * (W / 14) / 4` tokens (2x2 patches merged); `pixel_values` holds
every image's patches in one [patches, C * T * 14 * 14] tensor and `image_grid_thw` [images, 3] their grids.
Positions are 3-D (time, height, width) ids from `get_rope_index`, driven by `mm_token_type_ids`; the model
computes them before the decoder, so the rotary tables lvprune carries with the kept rows are already the
M-RoPE ones, and decode continues from the stored `rope_deltas` as in the stock model.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from .base import TINY_IDS, Backbone, register, chatml_template, tiny_text

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


_COMMON = dict(random_images=random_images, token_types=token_types,
               vision_token_fields=("image_token_id", "video_token_id"),
               image_inputs=("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"),
               token_inputs=("mm_token_type_ids",), video=True,
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
