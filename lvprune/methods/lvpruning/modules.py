"""LVPruning's decision modules (paper §3.1, eqs 1-4) as a Hugging Face model.

Vision tokens are the queries, the prompt's language tokens the keys and values; each module scores every
vision token with `γ = (keep, remove)`. A checkpoint holds only these modules, never the base model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from lvprune.methods.lvpruning.config import LVPrunerConfig

HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


class CrossAttentionBlock(nn.Module):
    """`O = softmax(Q Kᵀ/√d) V + Q` (eq. 3), then FFN `[LN, Linear(C, rC), SiLU, Linear(rC, C), LN]` with a residual."""

    def __init__(self, config: LVPrunerConfig):
        super().__init__()
        size, width = config.hidden_size, config.hidden_size * config.ffn_multiplier
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(size, size)
        self.k_proj = nn.Linear(size, size)
        self.v_proj = nn.Linear(size, size)
        self.ffn = nn.Sequential(
            nn.LayerNorm(size, eps=config.layer_norm_eps),
            nn.Linear(size, width),
            nn.SiLU(),
            nn.Linear(width, size),
            nn.LayerNorm(size, eps=config.layer_norm_eps),
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, heads, L, C / heads]."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, queries: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """queries [B, V, C], text [B, T, C], text_mask [B, T] bool (True = a key) -> [B, V, C]."""
        q = self.q_proj(queries)
        k, v = self._heads(self.k_proj(text)), self._heads(self.v_proj(text))
        # Plain matmuls, not SDPA: with a few dozen keys, CPU SDPA's blocked kernel is ~30% slower. A finite fp32
        # bias keeps rows without any key finite, and zeroed values make them 0 (a sample without prompt text).
        bias = torch.zeros(text_mask.shape, device=q.device)
        bias = bias.masked_fill_(~text_mask, torch.finfo(torch.float32).min)[:, None, None, :]
        scores = (self._heads(q) @ (k * k.shape[-1] ** -0.5).transpose(-1, -2)).float() + bias  # [B, heads, V, T]
        weights = scores.softmax(-1).to(v.dtype)
        attended = weights @ (v * text_mask.any(-1)[:, None, None, None])
        out = attended.transpose(1, 2).flatten(2) + q
        return out + self.ffn(out)


class DecisionModule(nn.Module):
    """One pruning stage: `num_blocks` cross-attention blocks and `W_O: C -> 2` (eq. 4)."""

    def __init__(self, config: LVPrunerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(CrossAttentionBlock(config) for _ in range(config.num_blocks))
        self.out_proj = nn.Linear(config.hidden_size, 2)

    def forward(self, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """vision [B, V, C], text [B, T, C], text_mask [B, T] bool -> γ [B, V, 2] (keep, remove) logits."""
        x = vision
        for block in self.blocks:
            x = block(x, text, text_mask)
        return self.out_proj(x)


class LVPrunerModel(PreTrainedModel):
    """All decision modules of a pruner: `stages[s]` runs after decoder layer `config.after_layers[s]`."""

    config_class = LVPrunerConfig
    base_model_prefix = "lvpruner"
    main_input_name = "vision"
    _no_split_modules = ["DecisionModule"]
    _supports_sdpa = True

    def __init__(self, config: LVPrunerConfig):
        super().__init__(config)
        self.stages = nn.ModuleList(DecisionModule(config) for _ in range(config.num_stages))
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing anything that is not a complete lvprune pruner: another
        model type, or weights missing, unexpected or of the wrong shape (which would be randomly initialised
        with a warning only)."""
        if kwargs.get("config") is None:
            hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            found, _ = cls.config_class.get_config_dict(pretrained_model_name_or_path, **hub)
            if found.get("model_type") != cls.config_class.model_type:
                raise ValueError(f"{pretrained_model_name_or_path} holds a {found.get('model_type')!r} model, not "
                                 f"an lvprune pruner ({cls.config_class.model_type!r}).")
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {k: sorted(map(str, v))[:4] for k, v in info.items()
                    if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(f"{pretrained_model_name_or_path} is not a complete lvprune pruner: {problems}.")
        return (model, info) if with_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Scores of stage `stage`: vision [B, V, C], text [B, T, C], text_mask [B, T] -> γ [B, V, 2]."""
        module = self.stages[stage]
        dtype = module.out_proj.weight.dtype
        return module(vision.to(dtype), text.to(dtype), text_mask)
