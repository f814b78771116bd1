"""kvpress's scorers as lvprune cache presses: rank the prefill's cache with NVIDIA kvpress's own `score`.

    from kvpress import SnapKVPress
    from lvprune.methods.kvpress import KVPressScorer

    press = KVPressScorer(SnapKVPress(compression_ratio=0.7, window_size=16))             # vision slots only
    shipped = KVPressScorer(SnapKVPress(compression_ratio=0.7, window_size=16), scope="all")  # text competes too
    model = lvprune.load_pruned_model(base, press=press)

Each layer from `start_layer` on calls the scorer's `score(module, hidden_states, keys, values, None, kwargs)`,
exactly as kvpress's own hook does with SDPA attention (no attention weights: SnapKV and TOVA recompute the
window's from the layer's input), then keeps, per KV head:
- `scope="vision"`: text slots, and `compute_n_kept(n_vision, compression_ratio)` vision slots, the best-scored;
- `scope="all"` (kvpress as shipped): `compute_n_kept(n_slots, compression_ratio)` slots of any kind.
Both keep each sample's last prompt token, as every lvprune press does (kvpress's window scorers keep it too).

kvpress 0.5.5 declares `transformers<5.3`, so pip will not install it beside lvprune; its scorers run on the
transformers lvprune supports. Install it without its dependencies (README, "Install"):
    pip install requests "cachetools<6" "fire<0.7" && pip install --no-deps kvpress==0.5.5
Scorers that need attention weights (`ObservedAttentionPress`, eager only) are refused. Importing kvpress wraps
every registered attention function, lvprune's included, for its head-wise masking (AdaKV); the wrapper acts
only on modules kvpress's own pipeline has marked, so it passes lvprune's calls through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvprune.core.protocols import CachePress, LayerInput
from lvprune.core.selection import top_counts

try:
    import kvpress
    from kvpress.utils import compute_n_kept
except ImportError as error:
    raise ImportError("lvprune.methods.kvpress needs kvpress, which declares transformers<5.3: install it "
                      "without its dependencies, as the README's Install section shows.") from error

SCOPES = ("vision", "all")
NEEDS_ATTENTIONS = ("ObservedAttentionPress",)
# Short names (`lvprune bench --kvpress`) -> kvpress's scorer classes and the settings lvprune uses (SnapKV's window:
# 16 queries, as prompts' text is often shorter than its default 64).
SCORERS = {"snapkv": ("SnapKVPress", dict(window_size=16)), "tova": ("TOVAPress", {}),
           "expected_attention": ("ExpectedAttentionPress", {}), "knorm": ("KnormPress", {}),
           "streaming_llm": ("StreamingLLMPress", {})}


def scorer(name: str, compression_ratio: float):
    """kvpress's scorer named `name` (a key of `SCORERS`) removing `compression_ratio` of what it scores."""
    if name not in SCORERS:
        raise ValueError(f"unknown kvpress scorer {name!r}; choose from {', '.join(SCORERS)}.")
    cls, settings = SCORERS[name]
    return getattr(kvpress, cls)(compression_ratio=compression_ratio, **settings)


class _WithRotary:
    """The layer's attention module as kvpress's scorers expect it, with `rotary_emb` (which kvpress's pipeline
    sets on every attention module) read from lvprune's `LayerInput` instead of written onto the model."""

    def __init__(self, module, rotary):
        self._module, self.rotary_emb = module, rotary

    def __getattr__(self, name):
        return getattr(self._module, name)


@dataclass(frozen=True)
class KVPressScorer(CachePress):
    """A kvpress `ScorerPress` (its `compression_ratio` the fraction removed) as an lvprune cache press.

    Args:
        scorer: a kvpress `ScorerPress` instance (SnapKV, TOVA, ExpectedAttention, Knorm, StreamingLLM, ...).
        scope: `"vision"` (the fraction applies to the vision slots; text stays) or `"all"` (as kvpress ships
            it: the fraction applies to every slot, text included).
        start_layer: the first 0-based layer pressed (kvpress presses every layer: 0).
    """

    scorer: object
    scope: str = "vision"
    start_layer: int = 0

    ranks_by_attention = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"KVPressScorer scope={self.scope!r} is not one of {SCOPES}.")
        if not hasattr(self.scorer, "score") or not hasattr(self.scorer, "compression_ratio"):
            raise TypeError(f"KVPressScorer needs a kvpress ScorerPress, got {type(self.scorer).__name__}.")
        if type(self.scorer).__name__ in NEEDS_ATTENTIONS:
            raise ValueError(f"{type(self.scorer).__name__} scores by eager attention weights, which lvprune's "
                             "attention does not materialise; use a scorer that works from the layer's input.")

    def layer_scores(self, module, keys, values, layer_input: LayerInput) -> torch.Tensor:
        scores = self.scorer.score(_WithRotary(module, layer_input.rotary), layer_input.hidden_states, keys, values,
                                   None, layer_input.kwargs)
        return scores.float()

    def vision_counts(self, scores, vision):
        present = vision.sum(-1)[:, 0].tolist()
        counts = [compute_n_kept(n, self.scorer.compression_ratio) if n else 0 for n in present]
        return torch.tensor(counts, device=scores.device), {}

    def select(self, scores, slots, last, ranking=None):
        if self.scope == "vision":
            return super().select(scores, slots, last, ranking)
        return self._select_any(scores, slots, last)

    def _select_any(self, scores, slots, last):
        """kvpress as shipped: each head keeps its `compute_n_kept(n_slots)` best slots of any kind (and the last
        prompt token). Returned as vision counts `kept − text` (the new cache is that much wider than the text)."""
        valid, vision = slots.valid, slots.vision & slots.valid  # [B, 1, K]
        protected = (slots.order == last[:, None, None]) & valid
        figures = torch.stack([valid.sum(-1)[:, 0], (valid & ~slots.vision).sum(-1)[:, 0],
                               (protected & vision).any(-1)[:, 0].long()])
        present, text, last_is_vision = figures.tolist()  # one host read
        kept = [compute_n_kept(n, self.scorer.compression_ratio) for n in present]
        # A width of exactly the text rows would read as "no vision kept" (the last token alone, if it is an
        # image's): keep one slot more there.
        kept = [k + (k == t and v) for k, t, v in zip(kept, text, last_is_vision)]
        ranked = scores.masked_fill(protected, float("inf")).masked_fill(~valid, float("-inf"))
        keep = top_counts(ranked, torch.tensor(kept, device=scores.device), max(kept, default=0)) & valid
        stats = dict(vision_tokens=vision.sum(-1)[:, 0], kept_per_head=(keep & vision).sum(-1))
        return keep, [k - t for k, t in zip(kept, text)], stats
