"""Mistral 3 (Mistral-Small-3.1): a Pixtral tower at the image's own size, 2x2 patches merged; the processor
puts an `[IMG_BREAK]` after each row of `[IMG]` tokens and an `[IMG_END]` after the last, which stay text."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Mistral3Config, MistralConfig, PixtralVisionConfig

from lvprune.families.base import TINY_IDS, Backbone, register, tiny_text
from lvprune.flops import VisionInput, encoder_layer_flops, patch_embed_flops, side_of, vision_layers_used

# Mistral's instruct format: `<s>[INST]prompt[IMG][/INST]answer</s>`, the answer and `</s>` marked for training.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ '[INST]' }}"
    "{%- for item in items -%}{%- if item['type'] == 'image' -%}{{ '[IMG]' }}{%- else -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{{ '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{%- for item in items -%}{{ item['text'] }}{%- endfor -%}{{ eos_token }}{% endgeneration %}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ '[SYSTEM_PROMPT]' }}{%- for item in items -%}{{ item['text'] }}{%- endfor -%}{{ '[/SYSTEM_PROMPT]' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def tiny_config(*, text=None, **overrides):
    """16-pixel images of 2-pixel patches, merged 2x2: 16 tokens an image."""
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=16, patch_size=2, head_dim=16)
    settings = dict(image_token_index=TINY_IDS["image_token_id"], spatial_merge_size=2, vision_feature_layer=-1)
    return Mistral3Config(text_config=MistralConfig(**tiny_text(sliding_window=None, **(text or {}))),
                          vision_config=vision, **{**settings, **overrides})


def random_images(config, n: int, generator) -> dict:
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(n, 3, size, size, generator=generator),
            "image_sizes": torch.tensor([[size, size]] * n)}


# ------------------------------------------------------------------------------ costs (`lvprune flops`)


PIXTRAL_LONGEST_EDGE = 1540  # Mistral-Small-3.1-24B-Instruct-2503


def vision_cost(config: Any, size: tuple[int, int], images: int) -> VisionInput:
    """Pixtral tower over 14px patches, 2x2 merged; [IMG_BREAK]/[IMG_END] end each row as text."""
    v, merge = config.vision_config, config.spatial_merge_size
    patch = side_of(v.patch_size)
    rows, cols = pixtral_token_grid(config, size)
    patches, tokens = rows * cols * merge**2, rows * cols
    seq = images * patches  # one sequence, block-diagonal mask: eager attention scores the whole square
    conv = patch_embed_flops(seq, v.num_channels, patch**2, v.hidden_size)
    layer = encoder_layer_flops(seq, v.hidden_size, v.intermediate_size, seq * seq, mlp_matrices=3)
    width, text_width = v.hidden_size, config.get_text_config().hidden_size
    merger = 2 * images * tokens * (merge**2 * width * width + width * text_width + text_width * text_width)
    return VisionInput(size, tokens, rows, patches, conv + vision_layers_used(config) * layer, merger)


def pixtral_token_grid(config: Any, size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of merged tokens: the image shrunk to ``PIXTRAL_LONGEST_EDGE``, padded to 28s."""
    height, width = size
    ratio = max(height / PIXTRAL_LONGEST_EDGE, width / PIXTRAL_LONGEST_EDGE)
    if ratio > 1:
        height, width = int(math.floor(height / ratio)), int(math.floor(width / ratio))
    step = side_of(config.vision_config.patch_size) * config.spatial_merge_size
    return (height - 1) // step + 1, (width - 1) // step + 1



BACKBONE = register(Backbone(
    family="Mistral 3", model_types=("mistral3",),
    tested_with=("mistralai/Mistral-Small-3.1-24B-Instruct-2503",),
    tiny_config=tiny_config, random_images=random_images, image_inputs=("pixel_values", "image_sizes"),
    chat_template=CHAT_TEMPLATE,
    vision_cost=vision_cost, typical_image_size=(1024, 1024),  # padded to 1036: 37 x 37 tokens (+ 37 row ends)
))
