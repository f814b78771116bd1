"""Everything lvprune assumes about transformers' internals, in one place.

lvprune integrates with stock models only through what this module names: the model-call keyword that
carries the KV cache, the output field that returns it, the cache class and its per-layer `keys`/`values`,
the attention-function registry and the SDPA/eager helpers, and where the decoder layers and the text config
are. What differs between model families (which ids are vision tokens, what a batch carries) is in
`lvprune.families`. A rename in a new transformers release is a change here.

Names are read from the installed code (signatures, dataclass fields), never from a version string.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import rotate_half

__all__ = [
    "CACHE_KWARGS", "DynamicCache", "activation_checkpointing", "POSITION_EMBEDDINGS_KWARG", "attention_module",
    "cache_kwarg", "cache_layers", "decoder_layers", "final_norm", "input_norm", "rotary_embedding",
    "output_cache", "unsupported_attention", "pop_cache", "register_attention", "repeat_kv", "rotate", "rotate_half",
    "sdpa_attention_forward", "set_text_attention", "text_attention", "text_config", "tower_queries_and_keys",
    "multimodal_projector", "vision_encoder_layers",
]

# The model-call keyword for the cache: `cache` from transformers 5.24, `past_key_values` before (and as a
# deprecated alias until 5.40). Newest first.
CACHE_KWARGS = ("cache", "past_key_values")
# What a decoder layer receives its rotary (cos, sin) tables as.
POSITION_EMBEDDINGS_KWARG = "position_embeddings"


# ------------------------------------------------------------------------------ the cache keyword


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(forward) -> str:
    parameters = inspect.signature(forward).parameters  # follows the decorators' __wrapped__
    for name in CACHE_KWARGS:
        if name in parameters:
            return name
    raise TypeError(f"{forward.__qualname__} takes none of {CACHE_KWARGS}: this transformers release is not "
                    "supported by lvprune (see pyproject.toml for the tested range).")


def cache_kwarg(model: nn.Module) -> str:
    """The keyword `model.forward` takes its KV cache as (`cache` or `past_key_values`)."""
    return _cache_kwarg_of(type(model).forward)


def pop_cache(kwargs: dict):
    """Remove the cache from a model call's keyword arguments, under whichever name the caller used.

    `generate()` passes the current name; a user may still pass the deprecated one. Returns the cache or None.
    """
    found = [kwargs.pop(name) for name in CACHE_KWARGS if name in kwargs]
    found = [cache for cache in found if cache is not None]
    if len(found) > 1 and found[0] is not found[1]:
        raise ValueError(f"pass the KV cache under one name, not both of {CACHE_KWARGS}.")
    return found[0] if found else None


def output_cache(output):
    """The cache a model call returned (`output.cache`, or `output.past_key_values` before 5.24)."""
    for name in CACHE_KWARGS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def cache_layers(cache) -> list:
    """A `DynamicCache`'s layers; each has `.keys` and `.values` [batch, kv_heads, seq, head_dim] (or None)."""
    return cache.layers


# ------------------------------------------------------------------------------ where things are


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers (`model.model.language_model.layers` in every supported family)."""
    inner = getattr(model, "model", model)
    language_model = getattr(inner, "language_model", None)
    if language_model is None or not hasattr(language_model, "layers"):
        raise TypeError(f"{type(model).__name__} has no `model.language_model.layers`: lvprune cannot find its decoder layers.")
    return language_model.layers


def attention_module(layer: nn.Module) -> nn.Module:
    """A decoder layer's self-attention module (`layer.self_attn`, which is called with the layer's normed
    hidden states and its rotary tables as `position_embeddings`)."""
    return layer.self_attn


def final_norm(model: nn.Module) -> nn.Module:
    """The language model's norm after its last decoder layer (`model.model.language_model.norm`)."""
    return model.model.language_model.norm


def input_norm(layer: nn.Module) -> nn.Module:
    """A decoder layer's input norm (`layer.input_layernorm`), applied to the hidden states before attention."""
    return layer.input_layernorm


def rotary_embedding(model: nn.Module) -> nn.Module:
    """The language model's rotary embedding (`model.model.language_model.rotary_emb`): `(x, position_ids) ->
    (cos, sin)`."""
    return model.model.language_model.rotary_emb


def rotate(x, cos, sin):
    """Rotate `x` [..., D] by rotary tables `cos`, `sin` (broadcastable to it) as every supported family's
    `apply_rotary_pos_emb` does: `x·cos + rotate_half(x)·sin`. The tables a decoder layer receives are of this
    elementwise form in every supported family (Qwen2-VL's M-RoPE ones come recomposed by its rotary embedding);
    `rotate(x, cos, -sin)` undoes a rotation whose tables have unit norm."""
    return x * cos + rotate_half(x) * sin


def vision_encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The vision tower's encoder layers (`model.model.vision_tower.encoder.layers` of a CLIP tower; under
    `.vision_model` in releases that wrap it), or None where the tower is not of that shape."""
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
    return getattr(encoder, "layers", None)


def multimodal_projector(model: nn.Module) -> nn.Module:
    """The projector from the tower's selected features to the language model's embeddings
    (`model.model.multi_modal_projector`): called once per prefill on [images, tokens, C_vision]."""
    return model.model.multi_modal_projector


def anyres_rows(model: nn.Module, image_sizes, tiles: int, tokens: int) -> list[torch.Tensor]:
    """LLaVA-NeXT: which tile patch each of an image's vision rows carries, per image: [rows_i] long, the flat
    index `tile * tokens + patch` into the projector's [tiles, tokens, C] output, -1 on an `image_newline` row.

    The stock packing itself (`pack_image_features`: the base tile, then the grid of tiles laid out, unpadded to
    the image's aspect ratio, one newline a row) applied to the indices, so the layout is the model's own.
    image_sizes [images, 2] (height, width); `tiles` is the tiles of all images together.
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    counts = [image_size_to_num_patches(image_size=size, grid_pinpoints=model.config.image_grid_pinpoints,
                                        patch_size=model.config.vision_config.image_size) for size in image_sizes]
    if sum(counts) != tiles:
        raise ValueError(f"image_sizes give {sum(counts)} tiles, the tower ran on {tiles}")
    index = torch.arange(tiles * tokens, dtype=torch.float64).view(tiles, tokens, 1)  # exact below 2**53
    packed, _ = model.model.pack_image_features(list(index.split(counts)), image_sizes, "default",
                                                image_newline=torch.tensor([-1.0], dtype=torch.float64))
    return [rows[:, 0].long() for rows in packed]


def tower_queries_and_keys(attention: nn.Module, hidden) -> tuple:
    """A CLIP encoder layer's attention (`layer.self_attn`) on its input `hidden` [B, N, C]: queries and keys
    [B, H, N, d] as its forward computes them (`q_proj`, `k_proj`, heads of `head_dim`), and its `scale`."""
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    query = attention.q_proj(hidden).view(shape).transpose(1, 2)
    key = attention.k_proj(hidden).view(shape).transpose(1, 2)
    return query, key, attention.scale


def text_config(model: nn.Module):
    """The language model's config."""
    return model.config.get_text_config()



def activation_checkpointing(model: nn.Module) -> bool:
    """Whether the model recomputes its layers in the backward pass (`is_activation_checkpointing`, named
    `is_gradient_checkpointing` in older releases)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if name in dir(type(model)):
            return bool(getattr(model, name))
    return False


def unsupported_attention(model: nn.Module) -> str | None:
    """Why lvprune's masks would not reproduce `model`'s decoder attention (None: plain causal full attention).

    Read from the text config, so a supported family configured with sliding windows is refused too.
    """
    text = text_config(model)
    kinds = set(getattr(text, "layer_types", None) or ()) - {"full_attention"}
    if kinds:
        return f"its decoder layers use {', '.join(sorted(kinds))} attention"
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        return f"its decoder layers use sliding-window attention (window {text.sliding_window})"
    return None


# ------------------------------------------------------------------------------ attention functions


def text_attention(model: nn.Module) -> str:
    """The attention implementation the language model runs with (`sdpa`, `eager`, ...)."""
    return text_config(model)._attn_implementation


def set_text_attention(model: nn.Module, name: str) -> None:
    """Run the language model with the registered attention function `name` (the vision tower keeps its own)."""
    model.set_attn_implementation({"text_config": name})


def register_attention(name: str, function) -> None:
    """Make `function` selectable as attention implementation `name` (idempotent)."""
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, function)
