"""LLaVA-NeXT (1.6): AnyRes. An image is a base view plus a grid of tiles chosen from `image_grid_pinpoints`,
each run through the CLIP tower; the grid's features are unpadded to the image's aspect ratio with one
`image_newline` token a row. `pixel_values` is [images, tiles, 3, H, W] (tiles padded to the batch's most),
`image_sizes` [images, 2] the original sizes."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

from .base import TINY_IDS, Backbone, register, tiny_text
from .llava import CHAT_TEMPLATE

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


BACKBONE = register(Backbone(
    family="LLaVA-NeXT", model_types=("llava_next",),
    tested_with=("llava-hf/llava-v1.6-vicuna-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf"),
    tiny_config=tiny_config, random_images=random_images, image_inputs=("pixel_values", "image_sizes"),
    chat_template=CHAT_TEMPLATE,  # Vicuna v1, as LLaVA-1.5
))
