"""Stage 2's auxiliary losses, read off a stock LLaVA through forward hooks (nothing in it is modified).

- Attention grounding: head 0 of one decoder layer, at the word that names the object ("red",
  "northwest"), should attend to that object's patches and the `<s>` sink as `targets.grounding_rows` says.
  Learning this from the answers alone is a needle-in-a-haystack search over hundreds of vision tokens
  that a from-scratch model does not finish within a CPU budget; told where to look, it learns in a few
  hundred steps and the answers follow.
- Alignment: at the grounding layer's input, an object patch's (normalised) hidden state should point the
  way of the sum of the input embeddings of its colour word and its cell word, so that a question word and
  the patches it names look alike for the attention to find.

The grounding layer is not the first: LVPruning's first stage prunes after the first layer, so an object
looked up there is looked up among the tokens the pruner kept, and pruning the wrong ones costs answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


class GroundingProbe:
    """Captures one decoder layer's attention input (normalised hidden states, rotary tables) in a forward pass.

    model: a `LlavaForConditionalGeneration` with a Llama-family language model; layer: 0-based.
    """

    def __init__(self, model, layer: int):
        self.model, self.captured = model, {}
        self.attention = model.model.language_model.layers[layer].self_attn
        self.handle = self.attention.register_forward_pre_hook(self._grab_attention_input, with_kwargs=True)

    def _grab_attention_input(self, module, args, kwargs):
        self.captured["hidden"] = kwargs["hidden_states"]  # already normalised by the layer
        self.captured["rotary"] = kwargs["position_embeddings"]

    def remove(self) -> None:
        self.handle.remove()

    def head0_log_probs(self, rows: torch.Tensor) -> torch.Tensor:
        """Log attention probabilities of head 0 at `rows` [R, 2] (sample, position) -> [R, N], causal."""
        attn, hidden = self.attention, self.captured["hidden"]
        batch, length, _ = hidden.shape
        query = attn.q_proj(hidden).view(batch, length, -1, attn.head_dim)[:, :, :1].transpose(1, 2)
        key = attn.k_proj(hidden).view(batch, length, -1, attn.head_dim)[:, :, :1].transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *self.captured["rotary"])
        b, t = rows[:, 0], rows[:, 1]
        scores = torch.einsum("rd,rnd->rn", query[b, 0, t], key[b, 0]) * attn.scaling
        scores = scores.masked_fill(torch.arange(length) > t[:, None], float("-inf"))
        return scores.log_softmax(-1)

    def attention_loss(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of head 0's attention at `rows` against `targets` [R, N]."""
        return -(targets * self.head0_log_probs(rows).clamp_min(-1e4)).sum(-1).mean()

    def copy_loss(self, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """-log of head 0's attention at `rows` [S, 2] on the positions `keys` [S]."""
        return -self.head0_log_probs(rows)[torch.arange(len(keys)), keys].mean()

    def alignment_loss(self, vision: torch.Tensor, words: torch.Tensor, on_object: torch.Tensor) -> torch.Tensor:
        """1 - cosine between each object patch's hidden state at the grounding layer's input and the sum of
        its colour and cell word embeddings, averaged over object patches.

        vision: [B, N] bool, the vision positions; words: [B, V, 2] the colour and cell word ids of each patch;
        on_object: [B, V] bool (see `data.ShapesTrainingSet.collate`).
        """
        target = self.model.get_input_embeddings().weight.detach()[words].sum(-2)  # [B, V, C]
        hidden = self.captured["hidden"][vision].view(target.shape)
        return (1 - F.cosine_similarity(hidden, target, dim=-1))[on_object].mean()
