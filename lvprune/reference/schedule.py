"""The learning-rate schedule both reference stages use."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
