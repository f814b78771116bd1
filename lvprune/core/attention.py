"""The attention function lvprune registers with transformers' `AttentionInterface`.

It builds each layer's mask from the call's `PruningState` (causal by original order, padding, kept tokens,
per-head KV pruning), then delegates the heavy attention to the implementation the model was loaded with.
After stage 1 of a training forward it applies the differentiable masked softmax of paper eqs 7-9 instead.
No mask is registered for this name, so transformers skips building its own (we never read it).
"""

from __future__ import annotations

import torch

from lvprune.core.contract import (
    attention_module,
    input_norm,
    register_attention,
    repeat_kv,
    rotate,
    sdpa_attention_forward,
)

NAME = "lvprune"
PROBE_KWARG = "lvprune_probe"
EPS = 1e-6
# The expected attention of future queries (`expected_scores`), with kvpress ExpectedAttentionPress's defaults:
# the first real rows are attention sinks, left out of the query statistics and of the softmax; the queries to
# come are modelled over this many positions after the prompt.
SINKS = 4
FUTURE_POSITIONS = 512


def lvprune_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query [B, Hq, Q, D], key/value [B, Hkv, K, D] (post-RoPE, full cache) -> ([B, Q, Hq, D], None).

    The parameters in transformers' order (`sdpa_attention_forward`'s): wrappers of the registry, as importing
    kvpress installs around every attention function, pass `dropout` by position."""
    probe = kwargs.get(PROBE_KWARG)
    if probe is not None:  # a probe call (`probe_attention`): keep the post-RoPE query and key, attend nothing
        probe.update(query=query, key=key, scaling=scaling)
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), None
    state = kwargs.get("lvprune_state")
    if state is None:
        raise RuntimeError("lvprune attention needs a PruningState: call the model through lvprune's hooks.")
    layer = module.layer_idx
    # Plain causal attention, or one decode token over real tokens only, needs no mask: SDPA takes its fast
    # path, as the stock model does unpadded.
    allowed = None if state.mask_free(layer) else state.allowed(layer)  # [B, h, Q, K]
    if state.keep is not None:
        output = masked_softmax_attention(module, query, key, value, allowed, state.keep, state.query_order, scaling)
    else:
        output = delegate(state.base_attention, module, query, key, value, allowed, scaling, dropout, state.prefill)
    if state.prefill and layer in state.attention_layers:
        state.last_query[layer] = last_query_scores(module, query, key, allowed, scaling)
    if state.prefill and layer in state.key_norm_layers:  # L1 norm of each row's post-RoPE keys, all heads: [B, K]
        state.key_norms[layer] = key.float().abs().sum((1, 3))
    press = state.press
    if press is not None and state.prefill and state.cache is not None and layer >= press.start_layer:
        if not press.ranks_by_attention:
            scores = press.layer_scores(module, key, value, state.layer_input)
        elif press.queries == "all":
            scores = observed_scores(module, query, key, allowed, scaling, state.slots[layer].valid[:, 0])
        elif press.queries == "expected":
            slots = state.slots[layer]
            rows = None if press.query_rows == "all" else ~slots.vision[:, 0]
            press.observe_queries(layer, query, slots.valid[:, 0], state.position_embeddings, rows)
            scores, ranking = expected_scores(module, query, key, value, slots.valid[:, 0], state.position_embeddings,
                                              state.layer_input.rotary, scaling, rows, press.query_gaussian(layer))
        else:
            scores = last_query_scores(module, query, key, allowed, scaling)
        keep, counts, stats = press.select(scores, state.slots[layer], state.last,
                                           ranking if press.queries == "expected" else None)
        state.prune_cache(layer, keep, counts, stats)
    return output, None


def expand_heads(mask: torch.Tensor, num_query_heads: int) -> torch.Tensor:
    """Per-KV-head mask [B, Hkv, Q, K] -> per-query-head [B, Hq, Q, K] (GQA groups share a KV head)."""
    if mask.shape[1] in (1, num_query_heads):
        return mask
    return mask.repeat_interleave(num_query_heads // mask.shape[1], dim=1)


def delegate(impl, module, query, key, value, allowed, scaling, dropout, causal=True):
    """Run the base implementation (`sdpa` or `eager`) with our boolean mask. `allowed` None: no mask, causal
    attention over the rows themselves (`causal`, a prefill) or every key (a one-token decode step)."""
    if impl == "eager":
        mask = expand_heads(allowed, query.shape[1]) if allowed is not None else _causal(query, key) if causal else None
        additive = None
        if mask is not None:
            additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
            additive.masked_fill_(~mask, torch.finfo(query.dtype).min)
        return _eager(module, query, key, value, additive, scaling)
    # Any other implementation (flash kernels cannot take arbitrary masks) runs as SDPA.
    mask = None if allowed is None else expand_heads(allowed, query.shape[1])
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                  is_causal=allowed is None and causal)[0]


def _causal(query, key):
    """[Q, K] bool: query i sees keys 0..i (queries and keys are the same rows)."""
    return torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()


def _eager(module, query, key, value, additive, scaling):
    """Plain softmax attention, as transformers' per-model `eager_attention_forward` computes it."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    logits = query @ key.transpose(-1, -2) * scaling
    weights = torch.softmax(logits if additive is None else logits + additive, dim=-1, dtype=torch.float32)
    return (weights.to(value.dtype) @ value).transpose(1, 2).contiguous()


def masked_softmax_attention(module, query, key, value, allowed, keep, query_order, scaling):
    """Paper eqs 7-9: `Â_ij = exp(Ā_ij) M_ij / Σ_k exp(Ā_ik) M_ik` with `M_ij = D_j` for vision keys j ≠ i.

    The mask multiplies the exponentials so gradients reach the decisions `keep` [B, N] (1 for non-vision).
    Training keeps every row, so keys and queries are the same N tokens.
    """
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = (query @ key.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill(~expand_heads(allowed, query.shape[1]), float("-inf"))
    is_self = query_order[:, :, None] == query_order[:, None, :]  # [B, Q, K]: M_ii = 1
    multiplier = torch.where(is_self, torch.ones_like(keep)[:, None, :], keep[:, None, :])[:, None]
    # Shift by the row max over the keys still kept, not over all keys: when a pruned key dominates a row, the
    # kept keys' exponentials would otherwise underflow below EPS and the row would shrink towards 0 instead of
    # renormalising over the kept keys as removal does at inference. Pruned keys above that max are capped at
    # it (they are multiplied by 0, so only their straight-through gradient sees the cap): a pruned key that
    # outscores every kept one by Δ would otherwise get a gradient e^Δ times the kept ones', and overflow.
    kept_max = scores.masked_fill(multiplier.detach() == 0, float("-inf")).amax(dim=-1, keepdim=True).detach()
    weights = (scores - kept_max).clamp(max=0).exp() * multiplier
    weights = weights / (weights.sum(dim=-1, keepdim=True) + EPS)
    return (weights.to(value.dtype) @ value).transpose(1, 2).contiguous()


def last_query_scores(module, query, key, allowed, scaling):
    """Attention of the last prompt token over all keys, one row per KV head: -> [B, Hkv, K].

    Computed for that single query row (the layer's attention itself stays in the base implementation);
    query heads of a GQA group are averaged.
    """
    key = repeat_kv(key, module.num_key_value_groups)
    logits = (query[:, :, -1:] @ key.transpose(-1, -2)).float() * scaling  # [B, Hq, 1, K]
    if allowed is not None:  # None: causal, and the last query sees every key
        logits = logits.masked_fill(~expand_heads(allowed[:, :, -1:], query.shape[1]), float("-inf"))
    probs = logits.softmax(dim=-1)[:, :, 0]
    return probs.unflatten(1, (-1, module.num_key_value_groups)).mean(dim=2)


def observed_scores(module, query, key, allowed, scaling, valid):
    """Attention every key receives, averaged over the real prompt queries, one row per KV head: -> [B, Hkv, K].

    The score of a cache pressed before the question is known (the context case), where the last prompt token
    is the image's last one; valid [B, Q] marks the real query rows (not padding or fillers).
    """
    key = repeat_kv(key, module.num_key_value_groups)
    logits = (query @ key.transpose(-1, -2)).float() * scaling  # [B, Hq, Q, K]
    mask = expand_heads(allowed, query.shape[1]) if allowed is not None else _causal(query, key)
    probs = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    weights = valid[:, None, :, None].to(probs.dtype)
    mean = (probs * weights).sum(2) / weights.sum(2).clamp(min=1)  # [B, Hq, K]
    return mean.unflatten(1, (-1, module.num_key_value_groups)).mean(dim=2)


def unit_tables(tables) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' rotary (cos, sin) [B, N, D] as float rotations of unit norm: the tables' scaling divided out, so
    rotations compose without compounding it."""
    cos, sin = (t.float() for t in tables)
    norm = (cos.square() + sin.square()).sqrt()
    return cos / norm, sin / norm


def modelling_rows(valid: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank, use, fit) [B, N]: each real row's rank among the real rows (the first `SINKS` are sinks); the real
    rows beyond the sinks (a prompt of sinks only keeps them); and the rows whose queries model the queries to
    come: those of `rows` among `use` (every `use` row where `rows` is None or a sample has none of them there)."""
    rank = valid.long().cumsum(-1) - 1
    beyond = valid & (rank >= SINKS)
    use = torch.where(beyond.any(-1, keepdim=True), beyond, valid)  # no sync
    if rows is None:
        return rank, use, use
    fit = use & rows
    return rank, use, torch.where(fit.any(-1, keepdim=True), fit, use)


def query_moments(query, valid, tables, rows=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over a batch's real rows beyond the sinks, those of `rows` only where given (no fallback: a
    calibration prompt without them adds nothing), of their queries before RoPE: the rows' count, Σq [Hq, D] and
    Σqqᵀ [Hq, D, D] (float64), for statistics gathered over many prompts (`QueryStatistics`).
    query [B, Hq, N, D] post-RoPE; valid, rows [B, N]; tables the rows' rotary (cos, sin) [B, N, D]."""
    cos, sin = unit_tables(tables)
    _, use, _ = modelling_rows(valid, None)
    picked_rows = use if rows is None else use & rows
    before_rope = rotate(query.float(), cos[:, None], -sin[:, None]).double()  # [B, Hq, N, D]
    picked = before_rope.transpose(1, 2)[picked_rows]  # [R, Hq, D]
    return picked_rows.sum(), picked.sum(0), torch.einsum("rhi,rhj->hij", picked, picked)


def expected_scores(module, query, key, value, valid, tables, rotary, scaling, rows=None, gaussian=None):
    """The attention the queries *to come* are expected to pay every key, one row per KV head, and the slots'
    ranking (that attention times each value's norm): -> [B, Hkv, K], [B, Hkv, K].

    kvpress's ExpectedAttentionPress (`get_query_statistics`, `apply_avg_rope`, `score`), per sample and padding-
    aware: the prompt's queries before RoPE (the rows' rotation undone) give a Gaussian (mean μ, covariance Σ per
    query head, the sinks left out; with `rows` [B, N], only those rows' queries, where a sample has any beyond
    its sinks), or `gaussian` gives it (μ [Hq, D], Σ [Hq, D, D] gathered beforehand, as kvpress's
    ExpectedAttentionStatsPress); its rotation averaged over the next `FUTURE_POSITIONS` positions R̄ gives the
    future queries' μ' = R̄μ, Σ' = R̄ΣR̄ᵀ; a key's expected logit is `s k·μ' + s²/2 kᵀΣ'k` (s the scaling), the
    softmax runs over the real non-sink keys and query heads of a GQA group are averaged. Sinks score 0 here and
    rank first, in order. query [B, Hq, N, D], key/value [B, Hkv, N, D] post-RoPE (a prefill: keys are the rows);
    valid [B, N] the real rows; tables: the rows' rotary (cos, sin) [B, N, D]; rotary: the language model's rotary
    embedding, for the positions after the prompt.
    """
    cos, sin = unit_tables(tables)
    rank, use, fit = modelling_rows(valid, rows)
    if gaussian is None:
        weights = fit[:, None, :, None].float()  # [B, 1, N, 1]
        before_rope = rotate(query.float(), cos[:, None], -sin[:, None])  # [B, Hq, N, D]
        count = weights.sum(2).clamp(min=1)  # [B, 1, 1]
        mean = (before_rope * weights).sum(2) / count  # [B, Hq, D]
        centred = (before_rope - mean[:, :, None]) * weights
        covariance = centred.transpose(-1, -2) @ centred / count[..., None]  # [B, Hq, D, D]
    else:
        mean, covariance = (t.to(query.device, torch.float32)[None] for t in gaussian)  # [1, Hq, D], [1, Hq, D, D]
    # The rotation to come: the last row's angle plus 1..FUTURE_POSITIONS, averaged (tables of unit norm compose
    # by the angle-sum rule).
    ahead = torch.arange(1, FUTURE_POSITIONS + 1, device=query.device)[None]
    ahead_cos, ahead_sin = (t.float() for t in rotary(query, ahead))  # [1, F, D]
    ahead_norm = (ahead_cos.square() + ahead_sin.square()).sqrt()
    ahead_cos, ahead_sin = ahead_cos / ahead_norm, ahead_sin / ahead_norm
    # The last row is each sample's last prompt token: batches are left-padded (the core refuses others) and a
    # stage's fillers go on the left (`token_slots`).
    last_cos, last_sin = cos[:, -1:], sin[:, -1:]  # [B, 1, D]
    mean_cos = (last_cos * ahead_cos - last_sin * ahead_sin).mean(1)  # [B, D]
    mean_sin = (last_sin * ahead_cos + last_cos * ahead_sin).mean(1)
    future_mean = rotate(mean, mean_cos[:, None], mean_sin[:, None])  # R̄μ
    # R̄ = diag(cos) + diag(sin)·P, with P x = rotate_half(x): R̄ Σ R̄ᵀ as two rotations of Σ's rows and columns.
    future_cov = rotate(rotate(covariance, mean_cos[:, None, None], mean_sin[:, None, None]).transpose(-1, -2),
                        mean_cos[:, None, None], mean_sin[:, None, None])
    keys = repeat_kv(key, module.num_key_value_groups).float()  # [B, Hq, K, D]
    logits = scaling * (keys @ future_mean[..., None])[..., 0]
    logits = logits + scaling**2 / 2 * ((keys @ future_cov) * keys).sum(-1)  # [B, Hq, K]
    probs = logits.masked_fill(~use[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    probs = probs.unflatten(1, (-1, module.num_key_value_groups)).mean(2)  # [B, Hkv, K]
    ranking = probs * value.float().norm(dim=-1)  # [B, Hkv, K]
    # Sinks rank first, earliest first: distinct finite values, so a count smaller than the vision sinks keeps
    # the same ones in a batch as alone (ties would be broken by the padded layout).
    top = ranking.masked_fill(~use[:, None], 0.0).amax(-1, keepdim=True)  # [B, Hkv, 1]
    sink = valid & (rank < SINKS)
    ranking = torch.where(sink[:, None], top + (SINKS - rank[:, None]).float(), ranking)
    return probs, ranking


def probe_attention(layer, hidden: torch.Tensor, position_embeddings, allowed: torch.Tensor) -> torch.Tensor:
    """The attention the last row would pay every row if decoder layer `layer` ran now on `hidden` [B, N, C]:
    the layer's own input norm, projections and rotary embedding (the family's code, called through its attention
    module with nothing cached), one query row. allowed [B, N] bool: the keys it may see. -> [B, N], mean over
    heads (PyramidDrop's ranking of the rows entering a layer)."""
    module, probe = attention_module(layer), {}
    module(hidden_states=input_norm(layer)(hidden), position_embeddings=position_embeddings, attention_mask=None,
           **{PROBE_KWARG: probe})
    scores = last_query_scores(module, probe["query"], probe["key"], allowed[:, None, None, :], probe["scaling"])
    return scores.mean(1)  # [B, Hkv, N] -> [B, N]: GQA groups are equal, so this is the mean over query heads


def register() -> None:
    """Make `NAME` selectable with `model.set_attn_implementation` (idempotent)."""
    register_attention(NAME, lvprune_attention)
