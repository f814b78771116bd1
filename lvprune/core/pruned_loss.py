"""`forward(labels=...)` on a pruned model: the causal-LM loss over the rows the prefill kept.

Evaluation harnesses score answers by their log-likelihood: one forward over prompt + answer with the answer
labelled. After LVPruning the logits have K' ≤ N rows, so the stock loss (which pairs row i with label i + 1)
would pair rows with the wrong labels. Here each kept row is paired with the label of the token that follows it
in the *original* sequence, which is what the masked (training) forward computes. Labelled tokens are never
decision keys, as in training: at inference the answer does not exist yet when the pruner decides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def next_token_targets(labels: torch.Tensor, order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The label each kept row predicts: labels [B, N], order [B, K'] original positions, valid [B, K'] -> [B, K'].

    Raises ValueError when a labelled token follows a row that was removed: that row's logits no longer exist.
    """
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)  # [B, N]
    targets = shifted.gather(1, order).masked_fill(~valid, IGNORE)
    if int((targets != IGNORE).sum()) != int((shifted != IGNORE).sum()):
        raise ValueError("a labelled token follows a vision token that LVPruning removed, so no logits predict it; "
                         "label only text that follows text (an answer after the prompt), as training does.")
    return targets


def pruned_loss(logits: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled targets, as transformers' causal-LM loss: logits [B, K', V]."""
    targets = next_token_targets(labels, order, valid)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
