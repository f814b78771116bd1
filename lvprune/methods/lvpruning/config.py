"""`LVPrunerConfig`: the configuration of LVPruning's decision modules (one per pruning stage)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from lvprune.core.stages import RANKINGS, check_stages

PAPER_AFTER_LAYERS = (1, 8, 16)
PAPER_DEPTH = 32
RATIO_LOSSES = ("mse", "huber")


class LVPrunerConfig(PreTrainedConfig):
    r"""Configuration of an [`LVPrunerModel`].

    Args:
        hidden_size: hidden size C of the language model the modules read (and of the modules themselves).
        num_hidden_layers: depth of the language model the pruner was built for; checked when attaching.
        after_layers: 1-based decoder layers after which a decision module runs (paper: after the 1st, 8th
            and 16th of 32 layers, i.e. `(1, 8, 16)`), strictly increasing and `< num_hidden_layers`.
        keep_ratios: fraction of *all* a sample's vision tokens kept after each stage (decisions accumulate),
            in (0, 1] and non-increasing. Training targets; inference may override them at load time.
        num_blocks: cross-attention blocks per decision module (paper: 2).
        num_heads: heads of each cross-attention block (paper: 8); must divide `hidden_size`.
        ffn_multiplier: width of each block's FFN as a multiple of C (paper: 2).
        gumbel_tau: temperature of the Gumbel-softmax decisions during training.
        ratio_loss: `"mse"` (paper eq. 11) or `"huber"` (the paper's variant, threshold `huber_delta`).
        huber_delta: threshold of the Huber ratio loss (paper: 0.5).
        lambda_causal, lambda_ratio: weights of the language-modelling and ratio losses (eq. 12). The paper does
            not publish them; 1.0 / 2.0 follow DynamicViT, whose decision scheme LVPruning adopts.
        rank_by: how inference ranks vision tokens. `"keep_logodds"` sorts by `γ₀ − γ₁`, the quantity the
            Gumbel decision of training thresholds (softmax is shift-invariant, so `γ₀` alone is not pinned down
            by training); `"keep_logit"` sorts by `γ₀` as the paper's text literally says.
        image_token_id: the base model's vision placeholder id (copied from its config, informative).
        base_model_type: the base's `config.model_type` (`llava`, `qwen2_vl`, ...); a pruner is refused by a base
            of another family even where the sizes agree (None, in pruners saved before it was recorded: unchecked).
        base_model_name_or_path: what the pruner was trained on (informative; written in model cards).
    """

    model_type = "lvpruner"
    # Its sizes come from the base: older transformers releases build `cls()` for defaults unless told not to.
    has_no_defaults_at_init = True

    hidden_size: int | None = None  # from the base: `LVPrunerConfig.from_base_config(base.config)`
    num_hidden_layers: int | None = None
    after_layers: list[int] | tuple[int, ...] = PAPER_AFTER_LAYERS
    keep_ratios: list[float] | tuple[float, ...] = (0.5, 0.3, 0.1)
    num_blocks: int = 2
    num_heads: int = 8
    ffn_multiplier: int = 2
    gumbel_tau: float = 1.0
    ratio_loss: str = "mse"
    huber_delta: float = 0.5
    lambda_causal: float = 1.0
    lambda_ratio: float = 2.0
    rank_by: str = "keep_logodds"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    image_token_id: int | None = None
    base_model_type: str | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        self.after_layers = [int(layer) for layer in self.after_layers]
        self.keep_ratios = [float(ratio) for ratio in self.keep_ratios]
        super().__post_init__(**kwargs)
        self.check()

    @property
    def num_stages(self) -> int:
        return len(self.after_layers)

    def check(self) -> None:
        """Raise `ValueError` naming the first invalid field."""
        missing = [name for name in ("hidden_size", "num_hidden_layers") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"LVPrunerConfig needs {' and '.join(missing)} of the base it prunes: build it with "
                "LVPrunerConfig.from_base_config(base.config). (A config.json saved by lvprune 0.1 for "
                'LLaVA-1.5-7B omits them: add "hidden_size": 4096, "num_hidden_layers": 32.)')
        check_stages(self.after_layers, self.keep_ratios, self.num_hidden_layers)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}.")
        if self.ratio_loss not in RATIO_LOSSES:
            raise ValueError(f"ratio_loss={self.ratio_loss!r} is not one of {RATIO_LOSSES}.")
        if self.rank_by not in RANKINGS:
            raise ValueError(f"rank_by={self.rank_by!r} is not one of {RANKINGS}.")
        for name in ("num_blocks", "ffn_multiplier", "gumbel_tau", "huber_delta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")

    @classmethod
    def from_base_config(cls, base_config, **overrides) -> "LVPrunerConfig":
        """Size a pruner for a base model's config (`LlavaConfig`, `Qwen2VLConfig`, ... or its text config).

        Unless `after_layers` is given, the paper's `(1, 8, 16)` of 32 layers is scaled to the base's depth.
        """
        text = getattr(base_config, "text_config", base_config)
        depth = text.num_hidden_layers
        values = dict(
            hidden_size=text.hidden_size,
            num_hidden_layers=depth,
            image_token_id=getattr(base_config, "image_token_id", None),
            base_model_type=getattr(base_config, "model_type", None),
            base_model_name_or_path=getattr(base_config, "_name_or_path", None) or None,
        )
        values.update(overrides)
        if "after_layers" not in overrides:
            stages = len(values.get("keep_ratios", cls.keep_ratios))
            values["after_layers"] = scaled_after_layers(depth, stages)
        return cls(**values)

    def check_base(self, base_config) -> None:
        """Raise `ValueError` if this pruner does not fit the base model `base_config`."""
        model_type = getattr(base_config, "model_type", None)
        if self.base_model_type is not None and getattr(base_config, "text_config", None) is not None \
                and model_type != self.base_model_type:
            raise ValueError(f"pruner was trained on a {self.base_model_type!r} model, the base is {model_type!r}: "
                             "its decision modules read another model's hidden states.")
        text = getattr(base_config, "text_config", base_config)
        if text.hidden_size != self.hidden_size:
            raise ValueError(
                f"pruner hidden_size={self.hidden_size} does not match the base model's hidden_size={text.hidden_size}."
            )
        if text.num_hidden_layers != self.num_hidden_layers:
            raise ValueError(
                f"pruner was built for {self.num_hidden_layers} decoder layers, the base model has "
                f"{text.num_hidden_layers}."
            )


def scaled_after_layers(depth: int, num_stages: int = 3) -> list[int]:
    """The paper's stage layers `(1, 8, 16)` of a 32-layer model, scaled to `depth` layers.

    `num_stages` < 3 takes the first stages. Layers are made strictly increasing after rounding.
    """
    if num_stages > len(PAPER_AFTER_LAYERS):
        raise ValueError(f"cannot scale the paper's {len(PAPER_AFTER_LAYERS)} stages to {num_stages}; pass after_layers.")
    if depth <= num_stages:
        raise ValueError(f"a {depth}-layer model cannot hold {num_stages} stages; pass fewer keep_ratios.")
    layers = []
    for paper_layer in PAPER_AFTER_LAYERS[:num_stages]:
        layer = max(1, round(paper_layer * depth / PAPER_DEPTH))
        layers.append(max(layer, layers[-1] + 1) if layers else layer)
    return layers
