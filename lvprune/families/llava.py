"""LLaVA-1.5: a CLIP tower, a 2-layer projector, a Llama decoder; `(image_size / patch_size)²` tokens an image."""

from __future__ import annotations

from typing import Any

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from lvprune.families.base import TINY_IDS, Backbone, register, tiny_text
from lvprune.flops import (
    VisionInput,
    encoder_layer_flops,
    patch_embed_flops,
    projector_flops,
    side_of,
    vision_layers_used,
)

CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}{%- else -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    "{% generation %}{{ render(message['content']) + eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT: ' }}{%- endif -%}"
)
"""LLaVA-1.5 (Vicuna v1) prompt. Content items are joined by newlines, so `[image, text]` renders as
LLaVA's `<image>\\n{text}`. The supervised span of an assistant turn is its text plus `</s>`; the
generation prompt ends with the space that precedes an answer during training."""


def tiny_config(*, image_size=16, patch_size=4, vision_hidden=32, vision_layers=2, text=None, **overrides):
    """A LLaVA-1.5-shaped config with `(image_size / patch_size)²` tokens an image (16 by default)."""
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                              patch_size=patch_size, projection_dim=vision_hidden)
    settings = dict(image_token_id=TINY_IDS["image_token_id"], vision_feature_layer=-1,
                    vision_feature_select_strategy="default", projector_hidden_act="gelu")
    return LlavaConfig(text_config=LlamaConfig(**tiny_text(**(text or {}))), vision_config=vision,
                       **{**settings, **overrides})


def random_images(config, n: int, generator) -> dict:
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(n, 3, size, size, generator=generator)}


# ------------------------------------------------------------------------------ costs (`lvprune flops`)


CLS_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}  # the towers the LLaVA families use


def vision_cost(config: Any, size: tuple[int, int], images: int) -> VisionInput:
    """Any image is one square tile of `(image_size / patch_size)²` patches (CLS dropped by "default")."""
    n = tile_features(config, check=False)
    return VisionInput(size, n, 0, 1, clip_tower_flops(config, images) if images else 0,
                       projector_flops(config, images * n))


def tile_features(config: Any, check: bool) -> int:
    """Features one tile gives the projector: patches (+ CLS; a tower not in ``CLS_TOKENS`` is
    taken to have one, as LLaVA-1.5's CLIP), less the first if "default"."""
    v = config.vision_config
    if check and v.model_type not in CLS_TOKENS:
        raise ValueError(f"vision tower {v.model_type!r} is not one of {', '.join(CLS_TOKENS)}")
    patches = (side_of(v.image_size) // side_of(v.patch_size)) ** 2
    features = patches + CLS_TOKENS.get(v.model_type, 1) - (config.vision_feature_select_strategy == "default")
    if check and features != patches:  # AnyRes lays each tile's features out on its patch grid
        raise ValueError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} with a "
                         f"{v.model_type} tower gives {features} features per tile, not its {patches} patches")
    return features


def clip_tower_flops(config: Any, tiles: int) -> int:
    """CLIP or SigLIP over ``tiles`` square tiles: patch conv + the used encoder layers (CLS included)."""
    v = config.vision_config
    patches = (side_of(v.image_size) // side_of(v.patch_size)) ** 2
    seq = patches + CLS_TOKENS.get(v.model_type, 1)
    conv = patch_embed_flops(tiles * patches, v.num_channels, side_of(v.patch_size) ** 2, v.hidden_size)
    layer = encoder_layer_flops(tiles * seq, v.hidden_size, v.intermediate_size, tiles * seq * seq)
    return conv + vision_layers_used(config) * layer



BACKBONE = register(Backbone(
    family="LLaVA-1.5", model_types=("llava",),
    tested_with=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
    tiny_config=tiny_config, random_images=random_images, chat_template=CHAT_TEMPLATE, vision_cost=vision_cost,
))
