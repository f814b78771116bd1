"""LLaVA-NeXT (1.6): AnyRes. An image is a base view plus a grid of tiles chosen from `image_grid_pinpoints`,
each run through the CLIP tower; the grid's features are unpadded to the image's aspect ratio with one
`image_newline` token a row. `pixel_values` is [images, tiles, 3, H, W] (tiles padded to the batch's most),
`image_sizes` [images, 2] the original sizes."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

from lvprune.families.base import TINY_IDS, Backbone, register, tiny_text
from lvprune.families.llava import CHAT_TEMPLATE, clip_tower_flops, tile_features
from lvprune.flops import VisionInput, projector_flops, side_of

TINY_PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def tiny_config(*, text=None, **overrides):
    """16-pixel tiles of 4-pixel patches; a 16x32 image is a base view and 2 tiles (52 vision tokens)."""
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=4)
    settings = dict(image_token_index=TINY_IDS["image_token_id"], image_grid_pinpoints=TINY_PINPOINTS,
                    vision_feature_layer=-1)
    return LlavaNextConfig(text_config=LlamaConfig(**tiny_text(**(text or {}))), vision_config=vision,
                           **{**settings, **overrides})


def random_images(config, n: int, generator) -> dict:
    """`n` 16x32 images: a base view and a 1x2 grid of tiles each."""
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(n, 3, 3, size, size, generator=generator),
            "image_sizes": torch.tensor([[size, 2 * size]] * n)}


# ------------------------------------------------------------------------------ costs (`lvprune flops`)


def vision_cost(config: Any, size: tuple[int, int], images: int) -> VisionInput:
    """LLaVA-NeXT and LLaVA-OneVision: base tile + best-resolution grid, unpadded, newlines."""
    v = config.vision_config
    tile, grid = side_of(v.image_size), side_of(v.image_size) // side_of(v.patch_size)
    per_tile = tile_features(config, check=True)
    if config.model_type == "llava_onevision" and images > 1:
        tiles, tokens = 1, per_tile + 1  # several images: each its base tile and one newline
    else:
        from transformers.image_processing_utils import select_best_resolution

        best_h, best_w = select_best_resolution(list(size), config.image_grid_pinpoints)
        tiles = 1 + math.ceil(best_h / tile) * math.ceil(best_w / tile)
        rows, cols = _unpadded(size, grid * (best_h // tile), grid * (best_w // tile))
        if config.model_type == "llava_onevision":
            rows, cols = _anyres_max(config.vision_aspect_ratio, rows, cols, grid)
        tokens = per_tile + rows * cols + rows  # base tile, unpadded grid, one newline per row
    return VisionInput(size, tokens, 0, tiles, clip_tower_flops(config, images * tiles),
                       projector_flops(config, images * tiles * per_tile))


def _unpadded(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """Rows and columns of grid features left once the padding to the pinpoint is cut (``unpad_image``)."""
    orig_h, orig_w = size
    if orig_w / orig_h > width / height:
        new_h = int(round(orig_h * (width / orig_w), 7))
        height -= 2 * ((height - new_h) // 2)
    else:
        new_w = int(round(orig_w * (height / orig_h), 7))
        width -= 2 * ((width - new_w) // 2)
    return height, width


def _anyres_max(aspect_ratio: str, rows: int, cols: int, grid: int) -> tuple[int, int]:
    """OneVision's "anyres_max_N": grid features over 1.1x N tiles' worth are resized down to about N."""
    match = re.fullmatch(r"anyres_max_(\d+)", str(aspect_ratio))
    if not match:
        raise ValueError(f"vision_aspect_ratio={aspect_ratio!r} is not 'anyres_max_N', the one the model reads")
    ratio = math.sqrt(rows * cols / (int(match.group(1)) * grid**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols



BACKBONE = register(Backbone(
    family="LLaVA-NeXT", model_types=("llava_next",),
    tested_with=("llava-hf/llava-v1.6-vicuna-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf"),
    tiny_config=tiny_config, random_images=random_images, image_inputs=("pixel_values", "image_sizes"),
    chat_template=CHAT_TEMPLATE,  # Vicuna v1, as LLaVA-1.5
    vision_cost=vision_cost, typical_image_size=(672, 672),  # a 2 x 2 grid of 336px tiles and the base: 2928 tokens
))
