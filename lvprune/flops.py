"""Analytic prefill FLOPs and KV-cache bytes of a vision-language model, pruned or not.

A multiply-add is 2 FLOPs. Only matrix products are counted (linear layers, the patch
convolution, attention scores and weighted values), as ``torch.utils.flop_counter.FlopCounterMode``
does; norms, activations, softmax, RoPE, biases and the resampling of features are well under 1%
of the total. The families are told apart by ``config.model_type`` (``lvprune.families``);
what differs between them is the image side: how many vision tokens one image of a given size
becomes (``image_input``) and what encoding it costs. The language model (any
``config.get_text_config()``), the decision modules and the KV cache are counted alike for all.

- **Vision tower**, every ViT block over its tokens (q/k/v/o, attention over each group of tokens
  that attend together, MLP) plus the patch convolution, up to the layer the feature is taken from:
  with ``vision_feature_layer = -2`` the last layer's output is unused and not counted (stock
  transformers still runs it: 0.016 TFLOPs more per 336px tile on a CLIP ViT-L/14).

  - ``llava`` (LLaVA-1.5): CLIP over one ``image_size`` square (the processor resizes and crops
    any image to it), patches plus CLS; ``"default"`` drops CLS, leaving 576 tokens at 336px.
  - ``llava_next`` (AnyRes): the image's best resolution among ``image_grid_pinpoints`` (as
    ``select_best_resolution``) is cut into ``image_size`` tiles; CLIP runs on each tile and on
    the base (the whole image resized to one tile). The grid's features are unpadded back to the
    image's aspect ratio and one ``image_newline`` token ends each of their rows; the base tile's
    features come first. A 672x672 image: 576 + 48 * 48 + 48 = 2928 tokens.
  - ``llava_onevision``: the same with a SigLIP tower (no CLS, ``"full"``), and
    ``vision_aspect_ratio = "anyres_max_N"``: grid features over ``1.1 * sqrt(N)`` tiles' worth
    are resized (bilinear) down to about N tiles. A prompt with several images takes only each
    one's base tile plus one newline (729 + 1 tokens at 384px), as the processor does.
  - ``qwen2_vl``, ``qwen2_5_vl``: the image is resized to multiples of ``patch_size *
    spatial_merge_size`` (28) within ``QWEN_MIN_PIXELS``..``QWEN_MAX_PIXELS`` (``smart_resize``),
    one patch per 14x14 pixels (a 3D convolution over 2 copies of the image), and the merger
    folds 2x2 patches into one token: ``(H / 14) * (W / 14) / 4``. Qwen2-VL's blocks attend over
    the whole image (fc1/fc2 MLP of ``embed_dim * mlp_ratio``); Qwen2.5-VL's only in
    ``fullatt_block_indexes``, the others within windows of ``window_size`` pixels (8x8 patches),
    with a SwiGLU MLP of ``intermediate_size``. Each image attends by itself.
  - ``mistral3`` (Pixtral tower): the image is shrunk to fit ``PIXTRAL_LONGEST_EDGE`` and padded
    up to multiples of 28; 2x2 patches merge into one token, and each row of tokens ends with an
    ``[IMG_BREAK]`` (the last with ``[IMG_END]``), which count as *text* tokens. All the prompt's
    images go through the tower as one sequence with a block-diagonal mask, so eager attention
    (counted here) scores the whole square over all of them.
  - ``internvl`` (InternViT): the processor cuts the image into 448px tiles whose grid best
    matches its aspect ratio (``INTERNVL_TILES``), plus a thumbnail when there is more than one;
    each tile runs patches plus CLS, and pixel shuffle (``downsample_ratio`` 0.5) turns its
    32 x 32 patches into 256 tokens.

  Fixed delimiters around an image (``<|vision_start|>``, ``<img>``...) are not added: count them
  in ``text_tokens`` like the rest of the prompt.
- **Projector**: the MLP (or Qwen's patch merger, Mistral3's merger and MLP, InternVL's MLP after
  pixel shuffle) on the features it is given: for AnyRes all tiles' features, before unpadding.
- **Decoder layers**: q/k/v/o (k/v sized by ``num_key_value_heads``), attention over the *full*
  ``n x n`` square (as an unfused kernel and FlopCounterMode count it; a causal kernel can skip
  half: 0.19 vs 0.10 TFLOPs on LLaVA-1.5-7B, 1 image + 30 text tokens), gate/up/down MLP; ``n``
  is the tokens still present in that layer.
- **lm_head** on the last position only, as ``generate()`` asks of the prefill
  (``logits_to_keep=1``); all 606 positions would add 0.16 TFLOPs on LLaVA-1.5-7B.
- **Decision modules**, one per LVPruning stage: 2 blocks of ``q = Linear(C, C)`` on the vision
  tokens still present, ``k, v = Linear(C, C)`` on the text tokens, 8-head cross-attention
  ``softmax(q k^T / sqrt(d)) v + q``, FFN ``C -> 2C -> C``; then ``Linear(C, 2)``.
  ``prefill_tflops`` includes them and ``decision_tflops`` says how much they are.

Layers are 1-based: after a stage "after layer l", every later layer sees
``round(rho_s * n_vision)`` vision tokens (``rho_s`` cumulative, over all the sample's vision
tokens). PLPHP prunes only the KV cache after the prefill: it changes ``kv_cache_bytes``, not
FLOPs. Its real per-layer rate (``r + dr``, ``r`` or ``r - dr``) depends on attention; this
estimate takes every layer from ``plphp_start_layer`` on as *vision-balanced*, keeping
``ceil(r * n_vision_present)`` vision tokens per KV head (text tokens all stay).

Against the LVPruning paper (LLaVA-1.5-7B, 1 image + 30 text tokens, stages after 1, 8, 16):

==========================  =============  =============  ==================================
TFLOPs (saving)             paper          here           note
==========================  =============  =============  ==================================
unpruned                    8.38           8.43           +0.6%; causal-half attention 8.34
rho = 0.6  (0.6, 0.4, 0.2)  3.97 (-52.6%)  3.92 (-53.5%)  -1.3%, modules (0.40) included
rho = 0.5  (0.5, 0.3, 0.1)  3.18 (-62.1%)  3.15 (-62.6%)  -0.9%, modules (0.36) included
rho = 0.45 (.45, .25, .05)  2.79 (-66.7%)  2.76 (-67.2%)  -1.0%, modules (0.34) included
decision modules            0.71           0.36           at rho = 0.5
==========================  =============  =============  ==================================

The paper does not say how it counted. Its pruned totals are matched only with the decision
modules included (without them: 3.52, 2.79, 2.42). Its 0.71 TFLOPs for the modules is about
twice this count of the architecture it describes (three stages that each saw all 576 vision
tokens would still cost only 0.59); the gap is left open, not closed by a tuned constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lvprune.core.selection import ceil_count, keep_counts
from lvprune.core.stages import check_stages

DECISION_BLOCKS = 2
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}




@dataclass(frozen=True)
class PruningPlan:
    """Where LVPruning stages sit and how much each keeps, and PLPHP's balanced rate.

    after_layers: 1-based decoder layers a decision module follows, strictly increasing (0: before the first).
    keep_ratios: cumulative fraction of all vision tokens kept after each stage, in (0, 1],
        non-increasing (a pruned token never comes back).
    plphp: ``(r, delta_r)`` or None; ``r`` in [0, 1], ``delta_r`` >= 0.
    plphp_start_layer: first 0-based decoder layer whose KV cache PLPHP prunes (as `PLPHPPress.start_layer`).
    """

    after_layers: tuple[int, ...] = ()
    keep_ratios: tuple[float, ...] = ()
    plphp: tuple[float, float] | None = None
    plphp_start_layer: int = 2

    def __post_init__(self):
        object.__setattr__(self, "after_layers", tuple(int(x) for x in self.after_layers))
        object.__setattr__(self, "keep_ratios", tuple(float(x) for x in self.keep_ratios))
        if self.after_layers or self.keep_ratios:
            check_stages(self.after_layers, self.keep_ratios)
        if self.plphp is not None:
            object.__setattr__(self, "plphp", tuple(float(x) for x in self.plphp))
            _check_plphp(self.plphp, self.plphp_start_layer)

    def check_fits(self, num_layers: int) -> None:
        """Raise ValueError if a stage or PLPHP's start lies outside a ``num_layers`` decoder."""
        if self.after_layers:
            check_stages(self.after_layers, self.keep_ratios, num_layers)
        if self.plphp is not None and self.plphp_start_layer >= num_layers:
            raise ValueError(f"plphp_start_layer={self.plphp_start_layer} is outside the model's "
                             f"decoder layers 0..{num_layers - 1}")


def _check_plphp(plphp: tuple[float, ...], start_layer: int) -> None:
    if len(plphp) != 2:
        raise ValueError(f"plphp must be (r, delta_r), got {list(plphp)}")
    r, delta_r = plphp
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"plphp r={r} is outside [0, 1]")
    if delta_r < 0.0:
        raise ValueError(f"plphp delta_r={delta_r} must be >= 0")
    if start_layer < 0:
        raise ValueError(f"plphp_start_layer={start_layer} must be >= 0 (layers are 0-based)")


@dataclass(frozen=True)
class CostEstimate:
    """Prefill cost of one sample; TFLOPs are 1e12 FLOPs, a multiply-add being 2 FLOPs.

    ``prefill_tflops`` includes ``decision_tflops``; ``breakdown`` holds the pruned run's FLOPs
    per part (vision_tower, projector, decoder, lm_head, decision). ``image_size`` is the
    ``(height, width)`` assumed of each image, ``vision_tokens_per_image`` what one becomes,
    ``vision_tokens`` all of the prompt's, ``text_tokens`` the other prompt tokens (those given
    plus any the processor adds per image, e.g. Mistral3's ``[IMG_BREAK]``).
    """

    prefill_tflops: float
    prefill_tflops_unpruned: float
    decision_tflops: float
    kv_cache_bytes: int
    kv_cache_bytes_unpruned: int
    breakdown: dict[str, int] = field(default_factory=dict)
    tokens_per_layer: tuple[int, ...] = ()
    model_type: str = ""
    image_size: tuple[int, int] | None = None
    vision_tokens_per_image: int = 0
    vision_tokens: int = 0
    text_tokens: int = 0


@dataclass(frozen=True)
class VisionInput:
    """What the prompt's images become and what encoding them costs.

    image_size: ``(height, width)`` assumed of each image (all alike).
    tokens_per_image: vision tokens (image placeholders, what LVPruning and PLPHP prune) per image.
    text_tokens_per_image: tokens the processor adds per image that count as text.
    encoder_inputs_per_image: what the tower runs on per image: tiles (LLaVA, InternVL) or patches (Qwen, Pixtral).
    vision_tower, projector: FLOPs for all the prompt's images.
    """

    image_size: tuple[int, int]
    tokens_per_image: int
    text_tokens_per_image: int
    encoder_inputs_per_image: int
    vision_tower: int
    projector: int


# ----------------------------------------------------------------------------- families


def backbone(config: Any):
    """The family of ``config`` (``lvprune.families``), which knows its vision tokens and their cost; a
    ValueError listing the supported families for any other config."""
    from lvprune.families import backbone_for

    if not hasattr(config, "vision_config"):
        raise ValueError(f"{type(config).__name__} is not a LLaVA config nor another supported vision-language "
                         f"config: model_type {getattr(config, 'model_type', None)!r} is not one of "
                         f"{', '.join(supported_model_types())}")
    return backbone_for(config)


def supported_model_types() -> list[str]:
    from lvprune.families import supported

    return sorted(supported())


def model_family(config: Any) -> str:
    """``config.model_type`` of a supported family, else a ValueError listing them."""
    backbone(config)
    return config.model_type


def default_image_size(config: Any) -> tuple[int, int]:
    """``(height, width)`` assumed when none is given: the family's ``typical_image_size``, else its tile."""
    typical = backbone(config).typical_image_size
    if typical is None:
        side = side_of(config.vision_config.image_size)
        return side, side
    return typical


def image_input(config: Any, image_size: tuple[int, int] | None = None, images: int = 1) -> VisionInput:
    """Vision tokens per image of ``image_size`` (height, width) and the FLOPs of encoding ``images`` of them."""
    size = default_image_size(config) if image_size is None else _check_image_size(image_size)
    return backbone(config).vision_cost(config, size, images)


def vision_tokens_per_image(config: Any, image_size: tuple[int, int] | None = None) -> int:
    """Vision tokens one image puts into the LLM (a one-image prompt). LLaVA-1.5: patches, plus
    CLS unless the strategy is "default"; other families see ``image_input``."""
    return image_input(config, image_size).tokens_per_image


def vision_layers_used(config: Any) -> int:
    """Encoder layers up to the deepest one a feature is taken from (hidden_states[0] = embeddings)."""
    total = config.vision_config.num_hidden_layers
    picks = getattr(config, "vision_feature_layer", -1)
    picks = [picks] if isinstance(picks, int) else list(picks)
    return max(p if p >= 0 else total + 1 + p for p in picks)
































def side_of(size: Any) -> int:
    """A square size given as an int or a (height, width) pair."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square vision size {list(size)} is not supported")
        return int(size[0])
    return int(size)


def _check_image_size(image_size: Any) -> tuple[int, int]:
    try:
        height, width = (int(x) for x in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size={image_size!r} must be (height, width)") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size={image_size!r} must be positive")
    return height, width


# ----------------------------------------------------------------------------- parts


def patch_embed_flops(patches: int, channels: int, kernel_pixels: int, hidden: int) -> int:
    """The patch convolution: one ``channels x kernel_pixels -> hidden`` product per patch."""
    return 2 * patches * channels * kernel_pixels * hidden


def encoder_layer_flops(tokens: int, hidden: int, intermediate: int, attention_square: int,
                        mlp_matrices: int = 2) -> int:
    """One ViT block over ``tokens`` tokens: q, k, v, o (``hidden x hidden``), scores and weighted
    values over ``attention_square`` (the sum of ``L^2`` over the groups that attend together),
    and an MLP of ``mlp_matrices`` ``hidden x intermediate`` matrices (2: fc1/fc2, 3: SwiGLU)."""
    return 2 * tokens * (4 * hidden * hidden + mlp_matrices * hidden * intermediate) + 4 * attention_square * hidden


def projector_flops(config: Any, n_vision: int) -> int:
    """The LLaVA families' 2-layer MLP projector on ``n_vision`` features."""
    picks = config.vision_feature_layer
    width_in = config.vision_config.hidden_size * (1 if isinstance(picks, int) else len(picks))
    width = config.get_text_config().hidden_size
    return 2 * n_vision * (width_in * width + width * width)


def decoder_layer_flops(text_config: Any, n_tokens: int) -> int:
    """One decoder layer's prefill over ``n_tokens`` tokens, attention over the full n x n square."""
    t = text_config
    hidden, head_dim = t.hidden_size, _head_dim(t)
    q_width, kv_width = t.num_attention_heads * head_dim, _kv_heads(t) * head_dim
    proj = 2 * n_tokens * hidden * (2 * q_width + 2 * kv_width)  # q, o and k, v
    attn = 4 * n_tokens * n_tokens * q_width  # every query head scores every key (GQA repeats k/v)
    mlp = 2 * n_tokens * 3 * hidden * t.intermediate_size
    return proj + attn + mlp


def lm_head_flops(text_config: Any, positions: int = 1) -> int:
    """The vocabulary projection for ``positions`` positions (the prefill needs only the last)."""
    return 2 * positions * text_config.hidden_size * text_config.vocab_size


def decision_module_flops(hidden: int, n_vision: int, n_text: int, blocks: int = DECISION_BLOCKS) -> int:
    """One LVPruning decision module: ``n_vision`` queries attend to ``n_text`` text keys.

    Per block: q on the vision tokens, k and v on the text tokens (all ``Linear(C, C)``), scores
    and weighted values (heads split C, so the head count does not change the FLOPs), the FFN
    ``C -> 2C -> C``. Then ``Linear(C, 2)`` for the keep/remove scores.
    """
    qkv = 2 * hidden * hidden * (n_vision + 2 * n_text)
    attn = 4 * n_vision * n_text * hidden
    ffn = 2 * n_vision * 2 * (hidden * 2 * hidden)
    return blocks * (qkv + attn + ffn) + 2 * n_vision * hidden * 2


# ----------------------------------------------------------------------------- schedule


def vision_tokens_per_layer(num_layers: int, n_vision: int, plan: PruningPlan) -> list[int]:
    """Vision tokens present in each decoder layer (index 0 = layer 1) under LVPruning's stages."""
    stages = dict(zip(plan.after_layers, plan.keep_ratios))
    # A stage after layer 0 prunes the input embeddings: every decoder layer sees its count.
    present = keep_counts([n_vision], stages[0])[0] if 0 in stages else n_vision
    counts = []
    for layer in range(1, num_layers + 1):
        counts.append(present)
        if layer in stages:
            present = keep_counts([n_vision], stages[layer])[0]  # the pruning core's own count rule
    return counts


def kv_vision_tokens_per_layer(vision_per_layer: list[int], plan: PruningPlan) -> list[int]:
    """Vision tokens each layer's KV cache keeps per KV head after PLPHP's balanced rate ``r``."""
    if plan.plphp is None:
        return list(vision_per_layer)
    r = plan.plphp[0]
    return [ceil_count(r, n) if layer >= plan.plphp_start_layer else n
            for layer, n in enumerate(vision_per_layer)]


def kv_cache_bytes(text_config: Any, tokens_per_layer: list[int], dtype_bytes: int) -> int:
    """Bytes of keys and values held after the prefill: ``tokens_per_layer[i]`` rows in layer i+1."""
    row = 2 * _kv_heads(text_config) * _head_dim(text_config) * dtype_bytes
    return row * sum(tokens_per_layer)


def config_dtype_bytes(config: Any) -> int:
    """Bytes per element of the text model's dtype (``torch_dtype`` in config.json); 2 if unset."""
    dtype = getattr(config.get_text_config(), "dtype", None) or getattr(config, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float16"
    return _DTYPE_BYTES.get(name, 2)


def _head_dim(text_config: Any) -> int:
    head_dim = getattr(text_config, "head_dim", None)
    return head_dim or text_config.hidden_size // text_config.num_attention_heads


def _kv_heads(text_config: Any) -> int:
    return getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads


# ----------------------------------------------------------------------------- estimate


def estimate_cost(
    config: Any,
    *,
    images: int = 1,
    text_tokens: int = 30,
    after_layers: tuple[int, ...] = (),
    keep_ratios: tuple[float, ...] = (),
    plphp: tuple[float, float] | None = None,
    plphp_start_layer: int = 2,
    dtype_bytes: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> CostEstimate:
    """Prefill FLOPs and KV-cache bytes of one sample on a config of a supported family (``lvprune.families``).

    ``images`` images of ``image_size`` ``(height, width)`` each (default ``default_image_size``;
    LLaVA-1.5 sees any image as its one 336px tile) and ``text_tokens`` other prompt tokens.
    Stages and PLPHP follow ``PruningPlan``; ``dtype_bytes`` defaults to the config's dtype. See
    the module docstring for what is counted.
    """
    plan = PruningPlan(after_layers, keep_ratios, plphp, plphp_start_layer)
    family = model_family(config)
    text = config.get_text_config()
    plan.check_fits(text.num_hidden_layers)
    _check_prompt(images, text_tokens, dtype_bytes)
    vision = image_input(config, image_size, images)
    n_vision = images * vision.tokens_per_image
    n_text = text_tokens + images * vision.text_tokens_per_image
    vision_per_layer = vision_tokens_per_layer(text.num_hidden_layers, n_vision, plan)
    parts = _prefill_parts(text, vision, n_text, n_vision, vision_per_layer, plan)
    unpruned = _prefill_parts(text, vision, n_text, n_vision, [n_vision] * len(vision_per_layer), PruningPlan())
    kv_vision = kv_vision_tokens_per_layer(vision_per_layer, plan)
    dtype_bytes = dtype_bytes or config_dtype_bytes(config)
    return CostEstimate(
        prefill_tflops=sum(parts.values()) / 1e12,
        prefill_tflops_unpruned=sum(unpruned.values()) / 1e12,
        decision_tflops=parts["decision"] / 1e12,
        kv_cache_bytes=kv_cache_bytes(text, [n + n_text for n in kv_vision], dtype_bytes),
        kv_cache_bytes_unpruned=kv_cache_bytes(text, [n_vision + n_text] * len(kv_vision), dtype_bytes),
        breakdown=parts,
        tokens_per_layer=tuple(n + n_text for n in vision_per_layer),
        model_type=family,
        image_size=vision.image_size,
        vision_tokens_per_image=vision.tokens_per_image,
        vision_tokens=n_vision,
        text_tokens=n_text,
    )


def _prefill_parts(text: Any, vision: VisionInput, text_tokens: int, n_vision: int, vision_per_layer: list[int],
                   plan: PruningPlan) -> dict[str, int]:
    """FLOPs per part of the prefill, given the vision tokens present in each decoder layer."""
    decision = sum(decision_module_flops(text.hidden_size, vision_per_layer[layer - 1] if layer else n_vision,
                                         text_tokens) for layer in plan.after_layers)
    return {
        "vision_tower": vision.vision_tower,
        "projector": vision.projector,
        "decoder": sum(decoder_layer_flops(text, n + text_tokens) for n in vision_per_layer),
        "lm_head": lm_head_flops(text),
        "decision": decision,
    }


def _check_prompt(images: int, text_tokens: int, dtype_bytes: int | None) -> None:
    if images < 0:
        raise ValueError(f"images={images} must be >= 0")
    if text_tokens < 0:
        raise ValueError(f"text_tokens={text_tokens} must be >= 0")
    if images + text_tokens == 0:
        raise ValueError("the prompt is empty: images and text_tokens are both 0")
    if dtype_bytes is not None and dtype_bytes <= 0:
        raise ValueError(f"dtype_bytes={dtype_bytes} must be a positive number of bytes")
