"""A trivial cache press, in one file: each KV head keeps the earliest half of the layer's vision tokens.

It proves the press protocol: this file plus one row of `test_press_equals_per_head_masked_reference`.
"""

from dataclasses import dataclass

import torch

from lvprune import CachePress


@dataclass(frozen=True)
class KeepEarliest(CachePress):
    fraction: float = 0.5
    start_layer: int = 1

    def vision_counts(self, scores, vision):
        return torch.ceil(vision.sum(-1)[:, 0] * self.fraction).long(), {}

    def vision_scores(self, scores, vision):
        return -torch.arange(scores.shape[-1], dtype=scores.dtype).expand_as(scores)
