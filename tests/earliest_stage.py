"""A trivial stage pruner, in one file: every stage keeps the earliest vision rows still present.

It proves the stage-pruner protocol: this file plus one row of `test_stage_pruner_removal_equals_masking`.
"""

import torch

from lvprune import StagePruner


class KeepEarliestRows(StagePruner):
    def forward(self, stage, vision, text, text_mask, **_):
        return self.as_gamma(-torch.arange(vision.shape[1], device=vision.device).expand(vision.shape[:2]))
