"""The two kinds of pruning method the core runs, and what it hands them.

**Stage pruners** (`StagePruner`): after chosen decoder layers, a stage pruner decides which vision rows leave the
sequence. LVPruning's decision modules (`lvprune.methods.lvpruning`) are one, the random and FastV baselines
others. A stage pruner has

- `config`: its `StageSchedule` (`lvprune.core.stages`): the stages (`after_layers`, 1-based) and their cumulative
  `keep_ratios`; each stage keeps the top `round(ratio × n_vision)` vision tokens of a sample;
- `forward(stage, vision [B, V, C], text [B, T, C], text_mask [B, T], **inputs) -> γ [B, V, 2]`: the
  keep/remove scores of the vision rows still present (ranked by `γ₀ − γ₁`) from their hidden states and the
  prompt's text rows. What else a pruner reads, the core computes only when asked:
  - `attention` [B, V]: the last prompt token's attention to them inside the stage layer (mean over heads), for
    a pruner whose `attention_layers` name that layer (0-based);
  - `next_attention` [B, V]: the attention the last prompt token would pay them in the *next* layer, computed
    from the rows entering it with that layer's own norm, projections and rotary tables (one query row), when
    `inputs` holds "next_attention";
  - `vision_valid` [B, V] bool: which of the V rows are real (a sample with fewer vision rows is filled), when
    `inputs` holds "vision_valid";
  - `key_norms` ([B, V], [B, T]): the L1 norm of the stage layer's post-RoPE keys of each vision and text row,
    every head (`inputs` "key_norms"); `positions` ([B, V], [B, T]): their original prompt positions
    ("positions"); `final_norm`: the language model's last norm module ("final_norm"); `keep_ratio`: the ratio
    the call applies at this stage ("keep_ratio": `keep_ratios=` may override the schedule's).

A pruner that counts otherwise than `round(ratio × n)` per sample defines `stage_counts(num_vision, ratio) ->
counts` (host ints): DART keeps its pivots and an equal share per pivot.

A stage after layer 0 acts before the first decoder layer, on the merged input embeddings: pruning before the
language model is a stage like any other (positions kept, the same removal and masked forward). A pruner that
reads or rewrites the vision tower's features before that (VisionZip merges tokens there) defines
`attach_to(model, keep_ratios) -> handles`: its own forward hooks, registered and removed with lvprune's; one that
needs a call input the tower is not given (LLaVA-NeXT's `image_sizes`) defines `read_call(inputs)`, which
`generate` calls first (it may run the tower before the model's first forward).

Everything else (counts, the protected last prompt token, removing rows and their rotary tables, the masked
training forward, the stats) is the core's. A new one is a subclass of `StagePruner` that overrides `forward`:

    class KeepEarliest(StagePruner):
        def forward(self, stage, vision, text, text_mask, **_):
            return self.as_gamma(-torch.arange(vision.shape[1]).expand(vision.shape[:2]))

**Cache presses** (`CachePress`): after the prefill of each layer from `start_layer` on, a press decides which
cached slots each KV head keeps. PLPHP (`lvprune.methods.plphp.PLPHPPress`) is one; a new method is one subclass
overriding `vision_counts` (how many vision slots a head keeps, and the layer's figures for `pruning_stats`) and,
if it ranks otherwise, `vision_scores`:

    @dataclass(frozen=True)
    class KeepEarliest(CachePress):
        fraction: float = 0.5
        start_layer: int = 2                             # the first 0-based layer pressed

        def vision_counts(self, scores, vision):           # how many vision slots each head of sample b keeps
            return torch.ceil(vision.sum(-1)[:, 0] * self.fraction).long(), {}

        def vision_scores(self, scores, vision):           # which ones: the highest scores win
            return -torch.arange(scores.shape[-1], dtype=scores.dtype).expand_as(scores)

A press that ranks by something other than attention (the keys, the values, the layer's input) sets
`ranks_by_attention = False` and overrides `layer_scores`; `lvprune.methods.kvpress` is one.

Text slots always stay, and so does each sample's last prompt token (it is the query that predicts, and every
generated token attends to it): the base class guarantees both, reads the counts to the host once per layer
(the widths of the new cache follow from them) and returns the layer's figures for `pruning_stats`. (kvpress's
presses as shipped, `scope="all"`, override `select` to let text slots compete too.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lvprune.core.selection import top_counts
from lvprune.core.stages import StageSchedule


class LayerInput(NamedTuple):
    """What a layer's attention module was called with, for presses that rank by it: hidden_states [B, N, D] (the
    normed input, one row per query), the call's keyword arguments (`position_embeddings`: the rows' rotary
    tables) and the language model's rotary embedding (for positions beyond the prompt)."""

    hidden_states: torch.Tensor
    kwargs: dict
    rotary: nn.Module


class CachePress:
    """Base of the cache presses (mixed into a frozen dataclass that has a `start_layer: int` field, the first
    0-based decoder layer whose cache is pressed)."""

    start_layer: int
    # Whose attention `scores` are: "last", the last prompt token's (the prompt case); "all", the mean over every
    # prompt query; or "expected", the attention expected of the queries to come (a Gaussian model of the prompt's
    # queries, rotated to the positions after it): the last two for a cache that will take more prompt tokens. A
    # dataclass field where a press offers several.
    queries: str = "last"
    # With queries="expected", whose prompt rows model the queries to come: "text", the language rows (what follows
    # a prompt is text: a question, an answer); "all", every row, as kvpress's ExpectedAttentionPress.
    query_rows: str = "text"
    # False: the press ranks by `layer_scores` (keys, values, the layer's input), not by attention scores.
    ranks_by_attention = True

    @property
    def reads_layer_input(self) -> bool:
        """Whether the press needs each layer's attention input (`PruningState.layer_input`): to score by it, or
        for the rotary embedding of the positions after the prompt (`queries="expected"`)."""
        return not self.ranks_by_attention or self.queries == "expected"

    # ---------------------------------------------------------------- the override points

    def query_gaussian(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With `queries="expected"`: the queries to come as a Gaussian before RoPE, mean [Hq, D] and covariance
        [Hq, D, D], for 0-based decoder layer `layer`; None (the default): fitted to each prompt's own rows."""
        return None

    def observe_queries(self, layer: int, query: torch.Tensor, valid: torch.Tensor, tables, rows) -> None:
        """With `queries="expected"`, called in each pressed layer's prefill before it is scored: the layer's
        queries [B, Hq, N, D] post-RoPE, its real rows [B, N], rotary tables (cos, sin) [B, N, D] and the rows whose
        queries model the queries to come ([B, N] bool, None: every row). A no-op here; gathering statistics
        overrides it (`lvprune.methods.plphp.query_statistics`)."""

    def vision_counts(self, scores: torch.Tensor, vision: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Vision slots each KV head of sample b keeps, and the layer's own per-sample figures for `pruning_stats`
        (device tensors): scores [B, Hkv, K], vision [B, 1, K] bool -> counts [B] long, stats."""
        raise NotImplementedError

    def vision_scores(self, scores: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Per-head ranking of the slots (highest kept): [B, Hkv, K]. Default: `scores` (the attention, or the
        ranking `select` was given)."""
        return scores

    def layer_scores(self, module: nn.Module, keys: torch.Tensor, values: torch.Tensor,
                     layer_input: LayerInput) -> torch.Tensor:
        """The press's own scores, for a press with `ranks_by_attention` False: keys/values [B, Hkv, K, D] (the
        layer's cache, post-RoPE) -> [B, Hkv, K], passed to `vision_counts` and `vision_scores` as `scores`."""
        raise NotImplementedError

    def describe(self, figures: dict) -> dict:
        """A layer's own figures (the device tensors `vision_counts` returned, one entry per sample) as host
        values, for `LayerStats.extras`. Default: each as a list."""
        return {name: value.tolist() for name, value in figures.items()}

    # ---------------------------------------------------------------- applying a press

    def select(self, scores: torch.Tensor, slots, last: torch.Tensor,
               ranking: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], dict]:
        """Which slots each KV head keeps.

        scores [B, Hkv, K]: the attention per KV head of the last prompt token (or of all prompt queries, or
        expected of the queries to come, see `queries`); slots: the layer's `TokenSlots` (one head);
        last [B]: the original position of each sample's last prompt token; ranking [B, Hkv, K]: what
        `vision_scores` ranks where it is not the attention itself (`queries="expected"`: the attention times the
        values' norms). Returns keep [B, Hkv, K] bool, the vision slots each head of a sample keeps (a host
        list: the layer's one host sync) and the layer's stats.
        """
        vision = slots.vision & slots.valid  # [B, 1, K]
        counts, extra = self.vision_counts(scores, vision)
        on_host = counts.tolist()
        protected = slots.order == last[:, None, None]  # [B, 1, K]: ranked first, within the count
        ranked = self.vision_scores(scores if ranking is None else ranking, vision).masked_fill(protected, float("inf"))
        chosen = top_counts(ranked.masked_fill(~vision, float("-inf")), counts, max(on_host, default=0)) & vision
        keep = chosen | (slots.valid & ~slots.vision) | (protected & slots.valid)
        stats = dict(vision_tokens=vision.sum(-1)[:, 0], kept_per_head=chosen.sum(-1), **extra)
        return keep, on_host, stats


class StagePruner(nn.Module):
    """Base of the stage pruners without trained weights: a `StageSchedule` and the scores' shape."""

    attention_layers: tuple[int, ...] = ()
    inputs: tuple[str, ...] = ()  # what else `forward` reads: "next_attention", "vision_valid", ... (module docstring)

    def __init__(self, config: StageSchedule):
        super().__init__()
        self.config = config

    @classmethod
    def for_base(cls, base_config, after_layers, keep_ratios, **kwargs) -> "StagePruner":
        """A pruner for a base model's config with the given stages."""
        return cls(StageSchedule.for_base(base_config, after_layers, keep_ratios), **kwargs)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must override forward (see lvprune.core.protocols)")

    @staticmethod
    def as_gamma(score: torch.Tensor) -> torch.Tensor:
        """Keep scores [B, V] -> γ [B, V, 2] = (score, 0), so both rankings (`γ₀ − γ₁`, `γ₀`) sort by score."""
        return torch.stack([score.float(), torch.zeros_like(score, dtype=torch.float32)], dim=-1)

    def extra_repr(self) -> str:
        return f"after_layers={list(self.config.after_layers)}, keep_ratios={list(self.config.keep_ratios)}"
