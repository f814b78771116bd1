"""Analytic prefill FLOPs and KV-cache bytes of a LLaVA model, pruned or not.

A multiply-add is 2 FLOPs. Only matrix products are counted (linear layers, the patch
convolution, attention scores and weighted values), as ``torch.utils.flop_counter.FlopCounterMode``
does; norms, activations, softmax, RoPE and biases are well under 1% of the total. Counted:

- **Vision tower** (CLIP ViT): the patch convolution and the encoder layers up to the one the
  feature is taken from, each over the patches plus CLS (q/k/v/o, full ``T x T`` attention, MLP).
  With ``vision_feature_layer = -2`` the last layer's output is unused, so it is not counted
  (stock transformers still runs it: 0.016 TFLOPs more per image on LLaVA-1.5-7B).
- **Projector**: the 2-layer MLP on each vision token; ``"default"`` drops CLS, leaving
  ``(image_size / patch_size) ** 2`` tokens per image.
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

from .config import check_stages
from .plphp import ceil_count

DECISION_BLOCKS = 2
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class PruningPlan:
    """Where LVPruning stages sit and how much each keeps, and PLPHP's balanced rate.

    after_layers: 1-based decoder layers a decision module follows, strictly increasing.
    keep_ratios: cumulative fraction of all vision tokens kept after each stage, in (0, 1],
        non-increasing (a pruned token never comes back).
    plphp: ``(r, delta_r)`` or None; ``r`` in [0, 1], ``delta_r`` >= 0.
    plphp_start_layer: first 0-based decoder layer whose KV cache PLPHP prunes (as `PLPHPConfig.start_layer`).
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
    per part (vision_tower, projector, decoder, lm_head, decision).
    """

    prefill_tflops: float
    prefill_tflops_unpruned: float
    decision_tflops: float
    kv_cache_bytes: int
    kv_cache_bytes_unpruned: int
    breakdown: dict[str, int] = field(default_factory=dict)
    tokens_per_layer: tuple[int, ...] = ()


# ----------------------------------------------------------------------------- parts


def vision_tokens_per_image(config: Any) -> int:
    """Vision tokens one image puts into the LLM: patches, plus CLS unless strategy is "default"."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1


def vision_layers_used(config: Any) -> int:
    """Encoder layers up to the deepest one a feature is taken from (hidden_states[0] = embeddings)."""
    total = config.vision_config.num_hidden_layers
    picks = config.vision_feature_layer
    picks = [picks] if isinstance(picks, int) else list(picks)
    return max(p if p >= 0 else total + 1 + p for p in picks)


def vision_tower_flops(config: Any, images: int) -> int:
    """CLIP ViT FLOPs for ``images`` images: patch conv + the used encoder layers (CLS included)."""
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    conv = 2 * patches * v.num_channels * v.patch_size**2 * v.hidden_size
    seq, hidden = patches + 1, v.hidden_size
    layer = 2 * seq * (4 * hidden * hidden + 2 * hidden * v.intermediate_size)
    layer += 4 * seq * seq * hidden  # scores and weighted values over all heads
    return images * (conv + vision_layers_used(config) * layer)


def projector_flops(config: Any, n_vision: int) -> int:
    """The 2-layer MLP projector on ``n_vision`` vision tokens."""
    picks = config.vision_feature_layer
    width_in = config.vision_config.hidden_size * (1 if isinstance(picks, int) else len(picks))
    width = config.text_config.hidden_size
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


def kept_vision_tokens(ratio: float, n_vision: int) -> int:
    """Vision tokens left after a stage with cumulative keep ratio ``ratio``: round(ratio * n)."""
    return int(round(ratio * n_vision))


def vision_tokens_per_layer(num_layers: int, n_vision: int, plan: PruningPlan) -> list[int]:
    """Vision tokens present in each decoder layer (index 0 = layer 1) under LVPruning's stages."""
    present, counts = n_vision, []
    stages = dict(zip(plan.after_layers, plan.keep_ratios))
    for layer in range(1, num_layers + 1):
        counts.append(present)
        if layer in stages:
            present = kept_vision_tokens(stages[layer], n_vision)
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
    dtype = getattr(config.text_config, "dtype", None) or getattr(config, "dtype", None)
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
) -> CostEstimate:
    """Prefill FLOPs and KV-cache bytes of one sample on a ``LlavaConfig``.

    ``images`` images (``vision_tokens_per_image`` tokens each) and ``text_tokens`` other prompt
    tokens. Stages and PLPHP follow ``PruningPlan``; ``dtype_bytes`` defaults to the config's
    dtype. See the module docstring for what is counted.
    """
    plan = PruningPlan(after_layers, keep_ratios, plphp, plphp_start_layer)
    _check_llava(config)
    text = config.text_config
    plan.check_fits(text.num_hidden_layers)
    _check_prompt(images, text_tokens, dtype_bytes)
    n_vision = images * vision_tokens_per_image(config)
    vision_per_layer = vision_tokens_per_layer(text.num_hidden_layers, n_vision, plan)
    parts = _prefill_parts(config, images, text_tokens, vision_per_layer, plan)
    unpruned = _prefill_parts(config, images, text_tokens, [n_vision] * len(vision_per_layer), PruningPlan())
    kv_vision = kv_vision_tokens_per_layer(vision_per_layer, plan)
    dtype_bytes = dtype_bytes or config_dtype_bytes(config)
    return CostEstimate(
        prefill_tflops=sum(parts.values()) / 1e12,
        prefill_tflops_unpruned=sum(unpruned.values()) / 1e12,
        decision_tflops=parts["decision"] / 1e12,
        kv_cache_bytes=kv_cache_bytes(text, [n + text_tokens for n in kv_vision], dtype_bytes),
        kv_cache_bytes_unpruned=kv_cache_bytes(text, [n_vision + text_tokens] * len(kv_vision), dtype_bytes),
        breakdown=parts,
        tokens_per_layer=tuple(n + text_tokens for n in vision_per_layer),
    )


def _prefill_parts(config: Any, images: int, text_tokens: int, vision_per_layer: list[int],
                   plan: PruningPlan) -> dict[str, int]:
    """FLOPs per part of the prefill, given the vision tokens present in each decoder layer."""
    text, n_vision = config.text_config, vision_per_layer[0]
    decision = sum(decision_module_flops(text.hidden_size, vision_per_layer[layer - 1], text_tokens)
                   for layer in plan.after_layers)
    return {
        "vision_tower": vision_tower_flops(config, images) if images else 0,
        "projector": projector_flops(config, n_vision),
        "decoder": sum(decoder_layer_flops(text, n + text_tokens) for n in vision_per_layer),
        "lm_head": lm_head_flops(text),
        "decision": decision,
    }


def _check_llava(config: Any) -> None:
    missing = [k for k in ("vision_config", "text_config", "vision_feature_layer") if not hasattr(config, k)]
    if missing:
        raise ValueError(f"{type(config).__name__} is not a LLaVA config: it has no {', '.join(missing)}")


def _check_prompt(images: int, text_tokens: int, dtype_bytes: int | None) -> None:
    if images < 0:
        raise ValueError(f"images={images} must be >= 0")
    if text_tokens < 0:
        raise ValueError(f"text_tokens={text_tokens} must be >= 0")
    if images + text_tokens == 0:
        raise ValueError("the prompt is empty: images and text_tokens are both 0")
    if dtype_bytes is not None and dtype_bytes <= 0:
        raise ValueError(f"dtype_bytes={dtype_bytes} must be a positive number of bytes")
