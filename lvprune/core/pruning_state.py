"""`PruningState`: everything one forward (or one `generate()`) knows about which tokens are where.

It is created per call, handed to every layer through the forward's keyword arguments, and read by the layer
hooks, the attention function and the cache. Two ways of applying LVPruning's decisions share it:

- `remove=True` (inference): pruned vision rows leave the hidden states, the rotary tables and every later
  layer's keys, so later layers compute on fewer tokens (paper eq. 13-14).
- `remove=False` (training): the sequence keeps its length and later layers mask pruned keys with the
  differentiable multiplicative mask of eqs 7-9, stored as `keep` [B, N].
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lvprune.core.attention import probe_attention
from lvprune.core.selection import keep_counts, keep_score, sample_decisions, topk_decisions
from lvprune.core.token_slots import TokenSlots, compact, gather_rows
from lvprune.families import vision_mask


class HostCounts(NamedTuple):
    """Per-sample counts of a prompt, read to the host once per call: every width a stage or a PLPHP layer
    compacts to follows from them (and from PLPHP's counts), so no other width is read back from the device."""

    vision: list[int]  # vision tokens
    text_rows: list[int]  # real rows that are not vision tokens (never pruned)
    text_keys: list[int]  # the decision modules' keys
    last_is_vision: list[int]  # 1 if the last prompt token is a vision token (always kept, beyond a count of 0)
    inner_padding: list[int]  # padding after the prompt's first token (right or middle padding)

    @classmethod
    def read(cls, valid, vision, text_key, last) -> "HostCounts":
        last_vision = vision.gather(1, last.clamp(min=0)[:, None])[:, 0]
        inner = ((valid.cumsum(-1) > 0) & ~valid).sum(-1)
        counts = torch.stack([vision.sum(-1), (valid & ~vision).sum(-1), text_key.sum(-1), last_vision.long(), inner])
        return cls(*counts.tolist())

    def kept(self, counts: list[int]) -> list[int]:
        """Vision tokens a sample keeps given its count: the count, or the protected last token if it is 0."""
        return [count or last for count, last in zip(counts, self.last_is_vision)]

    def widths(self, kept: list[int]) -> list[int]:
        """Real rows of each sample keeping `kept` vision tokens."""
        return [text + k for text, k in zip(self.text_rows, kept)]


class _Queries(NamedTuple):
    """Where gathered rows came from: index [B, K'] into the rows, real [B, K'] False for fillers."""

    index: torch.Tensor
    real: torch.Tensor


class PruningState:
    """Pruning bookkeeping of one call.

    Args:
        input_ids: [B, N] prompt ids; vision positions hold one of `vision_ids` (the backbone's image and video ids).
        attention_mask: [B, N] 1 for real tokens, 0 for padding (None: no padding).
        labels: [B, N] or None; supervised answer tokens (labels != -100) are never decision-module keys.
        pruner: an `LVPrunerModel` or None; keep_ratios: the stage ratios to apply (default: the pruner's).
        sample: Gumbel-sampled decisions (training) instead of top-k (inference and `.eval()`).
        remove: remove pruned rows (inference) instead of masking them (training).
        press: a `CachePress` (PLPHP) or None; cache: the `PrunedCache` it presses (None: no cache, no press).
        base_attention: the attention implementation the heavy attention delegates to.
    """

    def __init__(self, input_ids, attention_mask, vision_ids, num_layers, *, labels=None, pruner=None,
                 keep_ratios=None, sample=False, remove=True, press=None, cache=None, base_attention="sdpa"):
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        vision = vision_mask(input_ids, vision_ids) & valid
        text_key = valid & ~vision if labels is None else valid & ~vision & (labels == -100)
        self.rows, self.text_key = TokenSlots.from_sequence(valid, vision), text_key
        self.num_vision = vision.sum(-1)
        # Each sample's last prompt token is never pruned: it is the query whose logits predict the next token.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        self.last = torch.where(valid, positions, -1).amax(-1)  # [B]
        self.host = HostCounts.read(valid, vision, text_key, self.last)  # the call's one host sync before layers
        if remove and any(self.host.inner_padding):
            # Removal re-lays each prompt's kept rows against the right edge, as generation needs: the outputs
            # of a right-padded batch would come back at other positions than the input's, with no error.
            raise ValueError("a pruned model takes left-padded batches (its outputs keep each prompt's end "
                             "aligned); this batch has padding after a prompt's tokens. Pad on the left: "
                             "processor.tokenizer.padding_side = 'left', or LlavaCollator(padding_side='left').")
        self.rows.known_valid(all(w == input_ids.shape[1] for w in self.host.widths(self.host.vision)))
        self.present = self.host.vision  # vision tokens each sample has left (host), for top-k inference
        self.pruner, self.sample, self.remove, self.labels = pruner, sample, remove, labels
        self.keep_ratios = list(keep_ratios if keep_ratios is not None else pruner.config.keep_ratios) if pruner else []
        self.press, self.cache, self.base_attention = press, cache, base_attention
        self.layer_input = None  # the current layer's attention input, for a press that ranks by it (hooks)
        self._slots: list[TokenSlots | None] = [None] * num_layers
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # decode slots not yet appended to each layer's TokenSlots
        self.rectangular = self.unmasked = False  # decode: every cached slot real / one new token, no mask
        self.keep: torch.Tensor | None = None
        self.position_embeddings = None
        self.prefill, self.seen = True, input_ids.shape[1]
        self.query_order = self.rows.order[:, 0]
        self.keep_fractions: list[torch.Tensor] = []
        self.decisions: list[torch.Tensor] = []  # training: accumulated keep [B, N] after each stage
        # Pruners that rank by attention (FastV) name the layers whose last-query row they read.
        self.attention_layers = set(getattr(pruner, "attention_layers", ())) if pruner is not None else set()
        self.last_query: dict[int, torch.Tensor] = {}
        # Pruners that read the stage layers' keys (`inputs` "key_norms") have their L1 norms kept per row.
        wants = getattr(pruner, "inputs", ()) if pruner is not None else ()
        self.key_norm_layers = {a - 1 for a in pruner.config.after_layers if a > 0} if "key_norms" in wants else set()
        self.key_norms: dict[int, torch.Tensor] = {}
        self.layer_stats: list[dict] = [dict() for _ in range(num_layers)]
        self.widths: list[int] = [0] * num_layers  # hidden rows each layer computes on in the prefill
        self._mask_for = None  # (slots, query_order, mask) of the last mask built

    # ---------------------------------------------------------------- steps

    def end_prefill(self) -> None:
        """After the prefill: note whether every cached slot of every layer is a real token (known from the host
        counts: no sync)."""
        self.rectangular = all(slots.all_valid for slots in {id(slots): slots for slots in self.slots}.values())

    def begin_decode(self, valid: torch.Tensor) -> None:
        """Start a decode step of q new tokens: valid [B, q] (their attention-mask values)."""
        self.prefill = False
        # Read the new tokens' mask only while the cache is still all real tokens: one host sync a step, where
        # the stock model spends its own on building a mask that lvprune's attention never asks for.
        self.rectangular = self.rectangular and bool(valid.all())
        self.unmasked = self.rectangular and valid.shape[1] == 1
        order = self.seen + torch.arange(valid.shape[1], device=valid.device).expand(valid.shape[0], -1)
        # A step without a mask never reads the slots: their new slots are appended when one is next read.
        self._pending.append((order, valid.bool()))
        if not self.unmasked:
            self._append_pending()
        self.query_order, self.seen = order, self.seen + valid.shape[1]

    @property
    def slots(self) -> list:
        """Per layer, the `TokenSlots` of its KV cache (of its hidden rows during the prefill), up to date."""
        self._append_pending()
        return self._slots

    def _append_pending(self) -> None:
        if not self._pending:
            return
        order, valid = (torch.cat(parts, dim=-1) for parts in zip(*self._pending))
        self._pending.clear()
        appended = {}
        for i, slots in enumerate(self._slots):
            if id(slots) not in appended:  # layers sharing one TokenSlots share the appended one too
                appended[id(slots)] = slots.append(order, valid)
            self._slots[i] = appended[id(slots)]

    def enter_layer(self, layer_idx: int, position_embeddings):
        """Called before decoder layer `layer_idx`; returns the rotary (cos, sin) its rows need."""
        if not self.prefill:
            return position_embeddings
        self.slots[layer_idx] = self.rows
        self.widths[layer_idx] = self.rows.order.shape[-1]
        if self.position_embeddings is None:
            self.position_embeddings = position_embeddings
        return self.position_embeddings

    def causal(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` is plain causal attention: a prefill over the rows themselves, all of them
        real tokens (so their original order is their slot order), and no training mask on pruned keys."""
        slots = self.slots[layer_idx]
        return self.prefill and self.keep is None and slots is self.rows and slots.all_valid

    def mask_free(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` needs no mask: a causal prefill, or a one-token decode step over a cache of
        real tokens only (rectangular per head: no padding, no filler slots), which sees every key."""
        return self.unmasked if not self.prefill else self.causal(layer_idx)

    def allowed(self, layer_idx: int) -> torch.Tensor:
        """Layer `layer_idx`'s attention mask [B, h, Q, K] bool, shared by consecutive layers with the same keys."""
        slots = self.slots[layer_idx]
        if self._mask_for is None or self._mask_for[0] is not slots or self._mask_for[1] is not self.query_order:
            self._mask_for = (slots, self.query_order, slots.allowed(self.query_order))
        return self._mask_for[2]

    # ---------------------------------------------------------------- LVPruning stages

    def run_stage(self, stage: int, hidden: torch.Tensor, next_layer=None, final_norm=None) -> torch.Tensor:
        """Decide which vision tokens survive stage `stage`; hidden [B, L, C] -> [B, L', C]. `next_layer`: the
        decoder layer the rows enter next (for a pruner that ranks by its attention, `inputs` "next_attention");
        `final_norm`: the language model's last norm (`inputs` "final_norm")."""
        vision = self.rows.vision[:, 0]
        present = vision if self.keep is None else vision & (self.keep > 0)
        queries_width = max(self.host.vision if self.sample else self.present, default=0)
        gamma, queries = self._scores(stage, hidden, vision if self.sample else present, queries_width, next_layer,
                                      final_norm)
        # A pruner may count as its paper does (DART: pivots plus an equal share per pivot); else round(ratio × n).
        counts = getattr(self.pruner, "stage_counts", keep_counts)(self.host.vision, self.keep_ratios[stage])
        kept = self.host.kept(counts)
        # The last prompt token is kept, within the count (it ranks first): [B, V] over the query slots.
        last = (gather_rows(self.rows.order[:, 0], queries.index) == self.last[:, None]) & queries.real
        if self.sample:
            decided = sample_decisions(gamma, self.pruner.config.gumbel_tau)
        else:
            score = keep_score(gamma, self.pruner.config.rank_by).float().masked_fill(last, float("inf"))
            decided = topk_decisions(score, queries.real, torch.tensor(counts, device=score.device),
                                     max(kept, default=0))
            self.present = kept
        # Fillers write a neutral 1 onto rows that are not queries (slot indices are distinct).
        decided = torch.where(queries.real & ~last, decided, torch.ones_like(decided))
        full = torch.ones_like(vision, dtype=decided.dtype).scatter(1, queries.index, decided)
        if self.remove:
            # Padding rows leave too: a stage's width is the widest sample's real kept rows.
            return self._remove(hidden, (full.bool() | ~vision) & self.rows.valid[:, 0], self.host.widths(kept))
        self.keep = full if self.keep is None else self.keep * full  # eq. 10: a pruned token never returns
        self.keep_fractions.append(self._fraction(self.keep, vision))
        self.decisions.append(self.keep)
        return hidden

    def _scores(self, stage, hidden, queries, width: int, next_layer=None, final_norm=None):
        """γ [B, V, 2] of the rows `queries` [B, L] bool (at most `width` a sample), and where they sit."""
        queries = _Queries(*(t[:, 0] for t in compact(queries[:, None], width)))
        text = _Queries(*(t[:, 0] for t in compact(self.text_key[:, None], max(self.host.text_keys, default=0))))
        extra = {}
        layer = self.pruner.config.after_layers[stage] - 1
        if layer in self.last_query:  # the stage layer's last-query attention, mean over heads: [B, V]
            extra["attention"] = gather_rows(self.last_query[layer].mean(1), queries.index)
        wants = getattr(self.pruner, "inputs", ())
        if "vision_valid" in wants:  # which of the V vision rows are real (the others fill a short sample)
            extra["vision_valid"] = queries.real
        if "next_attention" in wants:  # the next layer's last-query attention to the rows still present
            keys = self.rows.valid[:, 0] if self.keep is None else self.rows.valid[:, 0] & (self.keep > 0)
            scores = probe_attention(next_layer, hidden, self.position_embeddings, keys)
            extra["next_attention"] = gather_rows(scores, queries.index)
        if "key_norms" in wants:  # the stage layer's key L1 norms of the vision rows and of the text rows
            norms = self.key_norms[layer]
            extra["key_norms"] = (gather_rows(norms, queries.index), gather_rows(norms, text.index))
        if "positions" in wants:  # the original prompt positions of the vision rows and of the text rows
            order = self.rows.order[:, 0]
            extra["positions"] = (gather_rows(order, queries.index), gather_rows(order, text.index))
        if "final_norm" in wants:
            extra["final_norm"] = final_norm
        if "keep_ratio" in wants:  # the ratio this call applies at the stage (`keep_ratios` may override the config's)
            extra["keep_ratio"] = self.keep_ratios[stage]
        gamma = self.pruner(stage, gather_rows(hidden, queries.index), gather_rows(hidden, text.index), text.real, **extra)
        return gamma, queries

    def _fraction(self, keep, vision):
        """Kept fraction of each sample's vision tokens: [B] (NaN for samples without vision tokens)."""
        return (keep * vision).sum(-1) / vision.sum(-1)

    def _remove(self, hidden, keep_rows, widths: list[int]):
        """Drop the rows not in `keep_rows` [B, L] bool (`widths[b]` of sample b) from the hidden states and the
        bookkeeping."""
        index, real = compact(keep_rows[:, None], max(widths))
        self.rows = self.rows.gather(index, real).known_valid(min(widths) == max(widths))
        self.query_order = self.rows.order[:, 0]  # prefill queries are the rows themselves
        self.keep_fractions.append(self.rows.vision[:, 0].sum(-1) / self.num_vision)
        self.text_key = self.text_key.gather(1, index[:, 0]) & real[:, 0]
        cos, sin = self.position_embeddings
        self.position_embeddings = (gather_rows(cos, index[:, 0]), gather_rows(sin, index[:, 0]))
        return gather_rows(hidden, index[:, 0])

    # ---------------------------------------------------------------- PLPHP

    def prune_cache(self, layer_idx: int, keep: torch.Tensor, counts: list[int], stats: dict) -> None:
        """Keep only slots `keep` [B, h, K] bool of layer `layer_idx`'s cache, per head: each head of sample b
        keeps its text slots and `counts[b]` vision slots (with the protected last token)."""
        widths = self.host.widths(self.host.kept(counts))
        index, real = compact(keep, max(widths))
        self.slots[layer_idx] = self.slots[layer_idx].gather(index, real).known_valid(min(widths) == max(widths))
        self.cache.keep_slots(layer_idx, index)
        self.layer_stats[layer_idx].update(stats)
