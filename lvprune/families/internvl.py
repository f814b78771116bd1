"""InternVL (2.5 / 3, transformers' `internvl`): InternViT tiles of 448 pixels, pixel-shuffled by
`downsample_ratio` (0.5: 256 tokens a tile), a Qwen2 decoder; `pixel_values` is [tiles, 3, H, W]."""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

from lvprune.families.base import TINY_IDS, Backbone, chatml_template, register, tiny_text
from lvprune.flops import VisionInput, encoder_layer_flops, patch_embed_flops, side_of, vision_layers_used


def tiny_config(*, text=None, **overrides):
    """16-pixel tiles of 2-pixel patches, shuffled by 0.5: 16 tokens a tile."""
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[16, 16], patch_size=[2, 2])
    settings = dict(image_token_id=TINY_IDS["image_token_id"], downsample_ratio=0.5, vision_feature_layer=-1)
    return InternVLConfig(text_config=Qwen2Config(**tiny_text(**(text or {}))), vision_config=vision,
                          **{**settings, **overrides})


def random_images(config, n: int, generator) -> dict:
    height, width = config.vision_config.image_size
    return {"pixel_values": torch.randn(n, 3, height, width, generator=generator)}


# ------------------------------------------------------------------------------ costs (`lvprune flops`)


INTERNVL_TILES = (1, 12)  # InternVL3-*-hf: min_patches, max_patches (crop_to_patches=True)


def vision_cost(config: Any, size: tuple[int, int], images: int) -> VisionInput:
    """InternViT over 448px tiles (+ thumbnail), CLS dropped, pixel shuffle to 256 tokens a tile."""
    v = config.vision_config
    if config.vision_feature_select_strategy != "default":
        raise ValueError("internvl needs vision_feature_select_strategy='default' (CLS dropped before pixel shuffle)")
    tile, grid = side_of(v.image_size), side_of(v.image_size) // side_of(v.patch_size)
    tiles = internvl_tiles(size, tile)
    side = int(grid * config.downsample_ratio)
    per_tile, width_in = side * side, v.hidden_size * int(1 / config.downsample_ratio) ** 2
    n, seq = images * tiles, grid * grid + 1
    conv = patch_embed_flops(n * grid * grid, v.num_channels, side_of(v.patch_size) ** 2, v.hidden_size)
    layer = encoder_layer_flops(n * seq, v.hidden_size, v.intermediate_size, n * seq * seq)
    text_width = config.get_text_config().hidden_size
    projector = 2 * n * per_tile * (width_in * text_width + text_width * text_width)
    return VisionInput(size, tiles * per_tile, 0, tiles, conv + vision_layers_used(config) * layer, projector)


def internvl_tiles(size: tuple[int, int], tile: int, min_tiles: int = INTERNVL_TILES[0],
                   max_tiles: int = INTERNVL_TILES[1]) -> int:
    """Tiles InternVL's processor (``get_optimal_tiled_canvas``) cuts, plus the thumbnail if more than one."""
    height, width = size
    grids = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1)
                    if min_tiles <= w * h <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best_diff, best = float("inf"), (1, 1)
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and area > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    count = best[0] * best[1] if max_tiles > 1 else 1
    return count + 1 if count > 1 else 1



BACKBONE = register(Backbone(
    family="InternVL", model_types=("internvl",),
    tested_with=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
    tiny_config=tiny_config, random_images=random_images,
    chat_template=chatml_template("<IMG_CONTEXT>\n", "<video>\n"),  # as the -hf checkpoints render it
    vision_cost=vision_cost, typical_image_size=(448, 448),  # one tile: 256 tokens
))
