"""DART: inside the language model, keep the vision tokens least like a few pivot tokens (duplication-aware).

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More", 2025,
https://arxiv.org/abs/2502.11494; official code ZichenWen1/DART, `modeling_llama_self.py`
(`get_retained_image_token`), here as the LLMC port of it (`token_reduction/dart.py`) writes it. After decoder
layer K − 1 (K = 2): pivots are the `pivot_image_token` image tokens and the `pivot_text_token` tokens after the
image with the largest L1 norm of that layer's keys (post-RoPE, every head); the rows entering layer K are normed
with the model's final norm; for each pivot in turn (in the order Python iterates the set of their sequence
indices), the `TOKEN_TOPK = ⌊budget / pivots⌋` remaining image tokens least cosine-similar to it are kept and
leave the pool; kept are the image pivots and every pick, so `pivot_image_token + pivots × TOKEN_TOPK` tokens of a
budget of `ratio × N`.

A stage pruner (`lvprune.core.protocols.StagePruner`) after 1-based layer K that reads the core's `key_norms`,
`positions` and `final_norm`, and counts as DART does (`stage_counts`): it ranks the image pivots first, then
the picks in the order they are made, so the core keeps DART's set. Where this differs from the official code:
- kept tokens keep their original positions, as every stage pruner here does;
- "the tokens after the image" are a sample's text rows after its last vision token (all its text rows if it
  ends with an image); sequence indices count from the sample's first real token (one prompt a batch there);
- a sample with fewer tokens than pivots takes the pivots it has (the official code would fail).

    with lvprune.pruning(model, DARTPruner(model.config, after_layer=2, keep_ratio=0.222)):
        model.generate(**inputs)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lvprune.core.protocols import StagePruner
from lvprune.core.stages import StageSchedule


def dart_order(vision_norms, text_norms, vision_pos, text_pos, vision_states, budget: float,
               pivot_image: int, pivot_text: int) -> list[int]:
    """One sample's kept vision rows in DART's order (image pivots, then each pivot's picks).

    vision_norms [V], text_norms [T]: key L1 norms; vision_pos [V], text_pos [T]: sequence indices (ints, from
    the sample's first token); vision_states [V, C]: the rows normed by the final norm, with text states appended
    as the last T rows ([V + T, C]) for text pivots. Returns indices into the V vision rows.
    """
    n_vision = vision_norms.shape[0]
    after = [t for t in range(text_norms.shape[0]) if text_pos[t] > max(vision_pos)] or list(range(len(text_pos)))
    image_pivots = vision_norms.topk(min(pivot_image, n_vision)).indices.tolist()
    after_norms = text_norms[after]
    text_pivots = [after[i] for i in after_norms.topk(min(pivot_text, len(after))).indices.tolist()]
    top_k = math.floor(budget // (len(image_pivots) + len(text_pivots)))
    # Sequence index -> the row it names: a vision row v, or text row t (stored after the V vision rows).
    row_of = {vision_pos[v]: v for v in range(n_vision)} | {text_pos[t]: n_vision + t for t in text_pivots}
    # Built as the official code builds them: a set's iteration order depends on how it was filled.
    pivots = set([vision_pos[v] for v in image_pivots] + [text_pos[t] for t in text_pivots])
    pool = set(sorted(vision_pos)) - set(vision_pos[v] for v in image_pivots)
    kept = [vision_pos[v] for v in image_pivots]
    for index in list(pivots):  # the official code iterates the set of the pivots' sequence indices
        candidates = list(pool)
        if not candidates or top_k == 0:
            break
        rows = torch.tensor([row_of[c] for c in candidates])
        similarity = -F.cosine_similarity(vision_states[row_of[index]], vision_states[rows], dim=-1)
        picks = [candidates[i] for i in similarity.topk(min(top_k, len(candidates))).indices.tolist()]
        kept += picks
        pool.difference_update(picks)
    return [row_of[i] for i in kept]


class DARTPruner(StagePruner):
    """DART: one stage after 1-based layer `after_layer` keeping the image pivots and each pivot's least similar
    image tokens, `pivot_image + (pivot_image + pivot_text) × ⌊keep_ratio × n / (pivot_image + pivot_text)⌋`."""

    inputs = ("key_norms", "positions", "final_norm", "vision_valid", "keep_ratio")

    def __init__(self, base_config, after_layer: int = 2, keep_ratio: float = 0.222, pivot_image: int = 4,
                 pivot_text: int = 4):
        super().__init__(StageSchedule.for_base(base_config, [after_layer], [keep_ratio]))
        self.pivot_image, self.pivot_text = pivot_image, pivot_text

    def stage_counts(self, num_vision: list[int], ratio: float) -> list[int]:
        """DART's count for a sample of n vision tokens: its image pivots and ⌊ratio n / pivots⌋ per pivot."""
        pivots = self.pivot_image + self.pivot_text
        return [min(n, min(self.pivot_image, n) + pivots * math.floor(ratio * n // pivots)) for n in num_vision]

    def forward(self, stage, vision, text, text_mask, key_norms=None, positions=None, final_norm=None,
                vision_valid=None, keep_ratio=None, **_):
        if key_norms is None or positions is None or final_norm is None or keep_ratio is None:
            raise RuntimeError("DARTPruner needs the core's key norms, positions, final norm and ratio: run it "
                               "through lvprune.pruning().")
        ratio = keep_ratio
        score = torch.full(vision.shape[:2], float("-inf"), device=vision.device)
        for b in range(vision.shape[0]):
            v_rows, t_rows = vision_valid[b].nonzero()[:, 0], text_mask[b].bool().nonzero()[:, 0]
            if len(v_rows) == 0:
                continue
            first = int(torch.cat([positions[0][b, v_rows], positions[1][b, t_rows]]).min())
            states = final_norm(torch.cat([vision[b, v_rows], text[b, t_rows]]))
            order = dart_order(key_norms[0][b, v_rows], key_norms[1][b, t_rows],
                               (positions[0][b, v_rows] - first).tolist(), (positions[1][b, t_rows] - first).tolist(),
                               states, ratio * len(v_rows), self.pivot_image, self.pivot_text)
            rank = torch.arange(len(order), 0, -1, dtype=torch.float32, device=vision.device)
            score[b, v_rows[torch.tensor(order, dtype=torch.long)]] = rank
            rest = torch.ones(len(v_rows), dtype=torch.bool)
            rest[order] = False
            score[b, v_rows[rest]] = -1.0  # real rows DART leaves out: after every kept one, before fillers
        return self.as_gamma(score)
