"""LLaVA-OneVision: LLaVA-NeXT's AnyRes with a SigLIP tower and a Qwen2 decoder, features downsized when an
image has more tiles than `vision_aspect_ratio` allows; videos are frames of pooled tokens (`<video>`)."""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

from lvprune.families.base import TINY_IDS, Backbone, chatml_template, register, tiny_text
from lvprune.families.llava_next import TINY_PINPOINTS, vision_cost


def tiny_config(*, text=None, **overrides):
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=16, patch_size=4)
    settings = dict(image_token_index=TINY_IDS["image_token_id"], video_token_index=TINY_IDS["video_token_id"],
                    image_grid_pinpoints=TINY_PINPOINTS, vision_feature_layer=-1)
    return LlavaOnevisionConfig(text_config=Qwen2Config(**tiny_text(**(text or {}))), vision_config=vision,
                                **{**settings, **overrides})


def random_images(config, n: int, generator) -> dict:
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(n, 3, 3, size, size, generator=generator),
            "image_sizes": torch.tensor([[size, 2 * size]] * n)}


BACKBONE = register(Backbone(
    family="LLaVA-OneVision", model_types=("llava_onevision",),
    tested_with=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    tiny_config=tiny_config, random_images=random_images,
    vision_token_fields=("image_token_id", "video_token_id"),
    image_inputs=("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos"),
    # the Qwen-1.5 conversation OneVision was trained with
    chat_template=chatml_template("<image>\n", "<video>\n", system="You are a helpful assistant."),
    vision_cost=vision_cost, typical_image_size=(768, 768),  # a 2 x 2 grid of 384px tiles and the base: 3699 tokens
))
