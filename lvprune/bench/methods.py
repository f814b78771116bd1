"""The methods the benchmark compares, each a way of attaching (or not) lvprune to the same base model.

| method                 | what prunes                                                                  |
| ---------------------- | ---------------------------------------------------------------------------- |
| `unpruned`             | nothing: the stock model, no hooks                                           |
| `random`               | random vision tokens at LVPruning's stages and ratios `[0.5, 0.3, 0.1]`       |
| `fastv`                | FastV after layer K, keeping as many tokens as LVPruning ρ=0.5's last stage |
| `dart`                 | DART after FastV's layer at FastV's ratio (its own count: 4 + 8 × ⌊ratio n / 8⌋) |
| `divprune-R`           | DivPrune before the LLM at R = LVPruning ρ=0.5's last ratio (matched tokens kept) |
|                        | and at R = its layer-averaged ratio (the same vision rows over the layers: ~ the FLOPs) |
| `visionzip-R`          | VisionZip before the LLM at DivPrune's two ratios (a LLaVA-1.5 base only)      |
| `pdrop`                | PyramidDrop at LVPruning ρ=0.5's stages and ratios (matched at every stage)   |
| `plphp`                | PLPHP alone (KV cache only)                                                  |
| `lvpruning-ρ`          | the trained pruner at ratios `[ρ, ρ−0.2, ρ−0.4]`, ρ ∈ {0.6, 0.5, 0.45}         |
| `lvpruning-0.5+plphp`  | both                                                                         |
| `kvpress-NAME`         | kvpress's scorer NAME (`--kvpress`), vision slots only, at PLPHP's base rate r |
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lvprune.core.contract import text_config
from lvprune.core.protocols import CachePress
from lvprune.core.pruning import Pruning
from lvprune.methods import build, visionzip
from lvprune.methods.lvpruning.config import scaled_after_layers
from lvprune.methods.plphp import PLPHPPress

METHOD_NAMES = ("unpruned", "random", "fastv", "dart", "divprune-0.1", "divprune-0.475", "visionzip-0.1",
                "visionzip-0.475", "pdrop", "plphp",
                "lvpruning-0.6", "lvpruning-0.5", "lvpruning-0.45", "lvpruning-0.5+plphp")  # on a 4-layer base
RHOS = (0.6, 0.5, 0.45)
REFERENCE_RHO = 0.5  # random and FastV are matched to LVPruning at this ρ


def layer_averaged_ratio(after_layers, keep_ratios, num_layers: int) -> float:
    """The fraction of vision rows a stage schedule leaves, averaged over the decoder layers (a layer after stage
    s computes on `keep_ratios[s]` of them): one ratio applied before the first layer that computes on as many
    vision rows in all, so about the same prefill FLOPs. (1, 2, 3) of 4 at (0.5, 0.3, 0.1): 0.475."""
    present, start = [], 0
    for after, ratio in zip([*after_layers, num_layers], [1.0, *keep_ratios]):
        present += [ratio] * (after - start)
        start = after
    return round(sum(present) / num_layers, 6)


def schedule(rho: float) -> list[float]:
    """The paper's inference ratios `[ρ, ρ−0.2, ρ−0.4]` (rounded, so 0.5 − 0.4 is exactly 0.1)."""
    return [round(rho - step, 6) for step in (0.0, 0.2, 0.4)]


@dataclass(frozen=True)
class RandomSlots(PLPHPPress):
    """A control for a cache press's ranking: PLPHP's layer classes and counts, with a random choice of which
    vision slots each head keeps (torch's generator: seed it for a repeatable choice)."""

    def vision_scores(self, scores, vision):
        return torch.rand(scores.shape, device=scores.device)


@dataclass(frozen=True)
class Method:
    """A benchmark row: a stage pruner (or None) with its ratios, and/or a cache press."""

    name: str
    pruner: object | None = None
    keep_ratios: tuple[float, ...] | None = None
    press: CachePress | None = None

    @property
    def stock(self) -> bool:
        return self.pruner is None and self.press is None

    def applied(self, model):
        """Context manager pruning `model` this way (the stock model, untouched, for `unpruned`)."""
        if self.stock:
            return contextlib.nullcontext(model)
        return Pruning(model, self.pruner, keep_ratios=self.keep_ratios, press=self.press)


def build_methods(model, pruner=None, *, plphp: PLPHPPress | None = None, fastv_layer: int = 2, seed: int = 0,
                  kvpress: tuple[str, ...] = ()) -> list[Method]:
    """The benchmark's rows, in `METHOD_NAMES` order, for `model` and a trained LVPruning `pruner` (the methods
    from `lvprune.methods`' registry), then the `kvpress` scorers' rows. Without a pruner, the training-free
    rows only, their stages at the paper's layers scaled to the base's depth (`scaled_after_layers`)."""
    plphp = plphp or PLPHPPress(queries="last")
    reference = schedule(REFERENCE_RHO)
    depth = text_config(model).num_hidden_layers
    after_layers = list(pruner.config.after_layers) if pruner is not None else scaled_after_layers(depth)
    stages = dict(after_layers=after_layers, keep_ratios=reference, seed=seed)
    methods = [
        Method("unpruned"),
        Method("random", build("random", model.config, **stages)),
        Method("fastv", build("fastv", model.config, after_layer=fastv_layer, keep_ratio=reference[-1])),
        Method("dart", build("dart", model.config, after_layer=fastv_layer, keep_ratio=reference[-1])),
    ]
    before_llm = (reference[-1], layer_averaged_ratio(after_layers, reference, depth))
    for ratio in before_llm:
        methods.append(Method(f"divprune-{ratio:g}", build("divprune", model.config, keep_ratio=ratio)))
    if visionzip.unsupported(model.config) is None:
        methods += [Method(f"visionzip-{ratio:g}", build("visionzip", model.config, keep_ratio=ratio))
                    for ratio in before_llm]
    stage_wise = dict(after_layers=after_layers, keep_ratios=reference)
    methods += [Method("pdrop", build("pdrop", model.config, **stage_wise)), Method("plphp", press=plphp)]
    if pruner is None:
        return methods + [kvpress_method(model, name, plphp) for name in kvpress]
    pruner = build("lvpruning", model.config, pruner=pruner)
    methods += [Method(f"lvpruning-{rho:g}", pruner, tuple(schedule(rho))) for rho in RHOS]
    methods.append(Method(f"lvpruning-{REFERENCE_RHO:g}+plphp", pruner, tuple(reference), plphp))
    return methods + [kvpress_method(model, name, plphp) for name in kvpress]


def kvpress_method(model, name: str, plphp: PLPHPPress) -> Method:
    """kvpress's scorer `name` restricted to vision slots, removing `1 − r` of them in every layer from PLPHP's
    start layer (PLPHP's base rate: its balanced layers keep as many)."""
    press = build("kvpress", model.config, scorer=name, compression_ratio=1 - plphp.r, start_layer=plphp.start_layer)
    return Method(f"kvpress-{name}", press=press)
