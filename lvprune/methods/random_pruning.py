"""Random pruning: a control, not a paper's method. A stage pruner (`lvprune.core.protocols.StagePruner`) whose
stages keep a uniformly random subset of the vision tokens still present, at a given schedule (LVPruning's, in
the benchmark), so a method's gain over it is what its ranking buys.

    with lvprune.pruning(model, RandomPruner.for_base(model.config, [1, 8, 16], [0.5, 0.3, 0.1])):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch

from lvprune.core.protocols import StagePruner
from lvprune.core.stages import StageSchedule


class RandomPruner(StagePruner):
    """Every stage keeps a uniformly random subset of the vision tokens still present (the core's counts).

    Deterministic in `seed`: the draws come from the pruner's own generator, in call order.
    """

    def __init__(self, config: StageSchedule, seed: int = 0):
        super().__init__(config)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def like(cls, pruner, keep_ratios=None, seed: int = 0) -> "RandomPruner":
        """Random pruning at another stage pruner's stages (an `LVPrunerModel`'s), with its ratios or `keep_ratios`."""
        old = pruner.config
        schedule = StageSchedule(tuple(old.after_layers), tuple(keep_ratios if keep_ratios is not None else old.keep_ratios),
                                 old.num_hidden_layers)
        return cls(schedule, seed)

    def forward(self, stage: int, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, **_) -> torch.Tensor:
        score = torch.rand(vision.shape[:2], generator=self.generator)
        return self.as_gamma(score.to(vision.device))
