"""InternVL (2.5 / 3, transformers' `internvl`): InternViT tiles of 448 pixels, pixel-shuffled by
`downsample_ratio` (0.5: 256 tokens a tile), a Qwen2 decoder; `pixel_values` is [tiles, 3, H, W]."""

from __future__ import annotations

import torch
from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

from .base import TINY_IDS, Backbone, register, chatml_template, tiny_text


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


BACKBONE = register(Backbone(
    family="InternVL", model_types=("internvl",),
    tested_with=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
    tiny_config=tiny_config, random_images=random_images,
    chat_template=chatml_template("<IMG_CONTEXT>\n", "<video>\n"),  # as the -hf checkpoints render it
))
