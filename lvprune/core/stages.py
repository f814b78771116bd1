"""Stage schedules: after which decoder layers a stage pruner acts, and how much of each sample's vision tokens
each stage keeps.

A stage pruner's `config` is a schedule: `after_layers` (1-based, strictly increasing; 0 is the place before the
first decoder layer, where the rows are the merged input embeddings: pruning before the language model), cumulative
`keep_ratios` (in (0, 1], non-increasing), the depth `num_hidden_layers` it was made for, and `rank_by` (how
its scores γ rank tokens). LVPruning's `LVPrunerConfig` is one, with its modules' sizes besides; the stage
pruners without weights (random, FastV) use a bare `StageSchedule`.
"""

from __future__ import annotations

from dataclasses import dataclass

RANKINGS = ("keep_logodds", "keep_logit")


@dataclass(frozen=True)
class StageSchedule:
    """The stages of a stage pruner without weights (see the module docstring)."""

    after_layers: tuple[int, ...]
    keep_ratios: tuple[float, ...]
    num_hidden_layers: int
    rank_by: str = "keep_logodds"

    def __post_init__(self):
        object.__setattr__(self, "after_layers", tuple(int(layer) for layer in self.after_layers))
        object.__setattr__(self, "keep_ratios", tuple(float(ratio) for ratio in self.keep_ratios))
        check_stages(self.after_layers, self.keep_ratios, self.num_hidden_layers)
        if self.rank_by not in RANKINGS:
            raise ValueError(f"rank_by={self.rank_by!r} is not one of {RANKINGS}.")

    @classmethod
    def for_base(cls, base_config, after_layers, keep_ratios) -> "StageSchedule":
        """The schedule `after_layers` / `keep_ratios` on a base model's config (or its text config)."""
        text = getattr(base_config, "text_config", base_config)
        return cls(tuple(after_layers), tuple(keep_ratios), text.num_hidden_layers)

    def with_ratios(self, keep_ratios) -> "StageSchedule":
        return StageSchedule(self.after_layers, tuple(keep_ratios), self.num_hidden_layers, self.rank_by)

    def check_base(self, base_config) -> None:
        """Raise `ValueError` if the schedule was made for a model of another depth than `base_config`'s."""
        text = getattr(base_config, "text_config", base_config)
        if text.num_hidden_layers != self.num_hidden_layers:
            raise ValueError(f"the stages were made for {self.num_hidden_layers} decoder layers, the base model "
                             f"has {text.num_hidden_layers}.")

    def to_dict(self) -> dict:
        return dict(after_layers=list(self.after_layers), keep_ratios=list(self.keep_ratios),
                    num_hidden_layers=self.num_hidden_layers, rank_by=self.rank_by)


def stage_for_layer(after_layers, layer_idx: int) -> int | None:
    """The stage that runs after 0-based decoder layer `layer_idx` of a schedule's `after_layers`, or None."""
    after = list(after_layers)
    return after.index(layer_idx + 1) if layer_idx + 1 in after else None


def check_stages(after_layers, keep_ratios, num_layers: int | None = None) -> None:
    """Validate stage layers (1-based, 0 before the first layer, strictly increasing, inside a `num_layers` model
    when it is given: a stage after the last layer would prune nothing) and keep ratios (in (0, 1],
    non-increasing). The one validator of a stage schedule: the pruners' configs, inference's ratios and the cost
    model all call it."""
    if len(after_layers) == 0:
        raise ValueError("after_layers must name at least one stage.")
    if len(after_layers) != len(keep_ratios):
        raise ValueError(
            f"after_layers={list(after_layers)} and keep_ratios={list(keep_ratios)} must have one entry per stage."
        )
    for ratio in keep_ratios:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"keep ratio {ratio} is outside (0, 1] in keep_ratios={list(keep_ratios)}.")
    for prev, ratio in zip(keep_ratios, keep_ratios[1:]):
        if ratio > prev:
            raise ValueError(f"keep_ratios={list(keep_ratios)} must be non-increasing ({ratio} > {prev}).")
    for layer in after_layers:
        if layer < 0 or (num_layers is not None and layer >= num_layers):
            top = f"{num_layers - 1}" if num_layers is not None else "depth - 1"
            raise ValueError(
                f"after layer {layer} in after_layers={list(after_layers)} is outside the model: layers are 1-based "
                f"(0: before the first decoder layer) and must be in [0, {top}] for {num_layers} decoder layers."
            )
    for prev, layer in zip(after_layers, after_layers[1:]):
        if layer <= prev:
            raise ValueError(f"after_layers={list(after_layers)} must be strictly increasing ({layer} <= {prev}).")
