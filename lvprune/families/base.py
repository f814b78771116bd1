"""`Backbone`: what differs between the model families lvprune prunes, and the registry that finds one.

The pruning core never names a model class. It asks the backbone of `config.model_type` which input ids are
vision tokens and which processor outputs a batch carries; everything else (where the decoder layers are, the
cache, the attention registry) is common to every supported family and lives in `lvprune.core.contract`.
A family is one module in this package that calls `register(Backbone(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Families lvprune knows it cannot reproduce, and why: their attention is not plain causal attention.
REFUSED = {
    "gemma3": "Gemma 3 has sliding-window layers and attends bidirectionally within image blocks",
    "gemma3n": "Gemma 3n has sliding-window layers and attends bidirectionally within image blocks",
    "paligemma": "PaliGemma attends bidirectionally over the image and the prompt prefix",
}

_REGISTRY: dict[str, "Backbone"] = {}


@dataclass(frozen=True)
class Backbone:
    """One model family.

    Args:
        family: the family's name in errors and tables ("LLaVA-NeXT").
        model_types: the `config.model_type` values it covers.
        tested_with: Hub ids of the real models its tests stand for (their configs, at tiny sizes).
        vision_token_fields: config fields holding the placeholder ids of vision tokens (image, video).
        image_inputs: processor outputs that hold one entry (or a run of rows) per image or video, in order;
            a batch concatenates them along dim 0 (padding trailing dims with zeros where sizes differ).
        token_inputs: processor outputs with one entry per token, padded like `input_ids` (with 0).
        tiny_config: `tiny_config(**overrides)` -> a tiny random config of the family, for tests and demos.
        random_images: `random_images(config, n, generator)` -> the vision inputs of `n` random images
            (`pixel_values` and the family's size inputs), for tests.
        token_types: `token_types(input_ids, config)` -> the per-token inputs a processor would give for these
            ids (Qwen2-VL's `mm_token_type_ids`), for tests; None: the family needs none.
        vision_cost: `vision_cost(config, (height, width), images)` -> a `lvprune.flops.VisionInput`: the vision
            tokens an image of that size becomes and the FLOPs of encoding `images` of them (`lvprune flops`).
        typical_image_size: the (height, width) `lvprune flops` assumes when none is given (None: the tower's
            tile, which is every image's size for LLaVA-1.5).
        chat_template: the family's chat template with its assistant turns marked `{% generation %}`, which
            training needs to label them (the templates on the Hub mostly lack the marks); the prompt it renders
            is the family's own.
    """

    family: str
    model_types: tuple[str, ...]
    tested_with: tuple[str, ...]
    tiny_config: Callable
    random_images: Callable
    vision_token_fields: tuple[str, ...] = ("image_token_id",)
    image_inputs: tuple[str, ...] = ("pixel_values",)
    token_inputs: tuple[str, ...] = ()
    token_types: Callable | None = field(default=None, compare=False)
    chat_template: str | None = None
    vision_cost: Callable | None = field(default=None, compare=False)
    typical_image_size: tuple[int, int] | None = None

    @property
    def video(self) -> bool:
        """Whether the family takes videos: its batches carry `pixel_values_videos`."""
        return "pixel_values_videos" in self.image_inputs

    def vision_token_ids(self, config) -> tuple[int, ...]:
        """The placeholder ids of vision tokens in `input_ids` (image first, then video)."""
        ids = tuple(getattr(config, name) for name in self.vision_token_fields
                    if getattr(config, name, None) is not None)
        if not ids:
            raise TypeError(f"{self.family} config has none of {self.vision_token_fields}: lvprune cannot find its "
                            "vision tokens.")
        return ids


def register(backbone: Backbone) -> Backbone:
    for model_type in backbone.model_types:
        _REGISTRY[model_type] = backbone
    return backbone


def supported() -> dict[str, Backbone]:
    """model_type -> Backbone, every supported family."""
    return dict(_REGISTRY)


def backbone_for(config) -> Backbone:
    """The backbone of a model's config (or of a model), or a ValueError naming the supported families."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    families = ", ".join(f"{t} ({b.family})" for t, b in sorted(_REGISTRY.items()))
    why = REFUSED.get(model_type, "it is not a family lvprune has been tested on")
    raise ValueError(f"lvprune cannot prune model_type {model_type!r}: {why}. Supported: {families}.")


def vision_mask(input_ids: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """[B, N] bool: positions holding any of the vision placeholder `ids`."""
    if len(ids) == 1:
        return input_ids == ids[0]
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


# Token ids of the tiny configs: every family's placeholders sit below TINY_FIRST_TEXT_ID.
TINY_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, image_token_id=3, video_token_id=4,
                vision_start_token_id=5, vision_end_token_id=6)
TINY_FIRST_TEXT_ID = 8


def tiny_text(**overrides) -> dict:
    """The decoder of every tiny config: 4 layers of width 64, 4 query and 2 KV heads, a vocabulary of 96."""
    text = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {**text, **overrides}


# ChatML, as Qwen2-VL, Qwen2.5-VL and InternVL render it, with the assistant's text and `<|im_end|>` marked for
# training. Newlines are written as expressions: `{%- -%}` strips the template's own whitespace.
_CHATML = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' -%}{{ IMAGE }}"
    "{%- elif item['type'] == 'video' -%}{{ VIDEO }}"
    "{%- else -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' and SYSTEM -%}"
    "{{ '<|im_start|>system\\n' + SYSTEM + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ render(message['content']) + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}{{ render(message['content']) + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chatml_template(image: str, video: str = "", system: str = "") -> str:
    """The ChatML training template with `image` (and `video`) as the placeholders an item renders as, and
    `system` as the default system turn of a conversation that has none ("" for none)."""
    settings = "".join(f"{{%- set {name} = {value!r} -%}}" for name, value in
                       (("IMAGE", image), ("VIDEO", video), ("SYSTEM", system)))
    return settings + _CHATML
