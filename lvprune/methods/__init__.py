"""The pruning methods, one file each, registered by name.

| name        | kind        | file                | what it ranks by                                        |
| ----------- | ----------- | ------------------- | ------------------------------------------------------- |
| `lvpruning` | stage       | `lvpruning/`        | trained cross-attention decision modules (text → vision) |
| `random`    | stage       | `random_pruning.py` | nothing: uniform random (a control)                      |
| `fastv`     | stage       | `fastv.py`          | the last prompt token's attention at layer K             |
| `divprune`  | stage (0)   | `divprune.py`       | diversity of the input embeddings, before the LLM        |
| `visionzip` | stage (0)   | `visionzip.py`      | the tower's CLS attention, the rest merged (LLaVA, -NeXT)  |
| `pdrop`     | stage       | `pyramid_drop.py`   | the last token's attention in the next layer, 3 stages   |
| `dart`      | stage       | `dart.py`           | duplication: least like a few key-norm pivots, layer 2   |
| `plphp`     | cache press | `plphp.py`          | per layer class, per KV head attention                   |
| `kvpress`   | cache press | `kvpress.py`        | a kvpress scorer (SnapKV, TOVA, ...)                     |

A *stage pruner* (`StagePruner`) removes vision rows from the sequence after chosen decoder layers; a *cache
press* (`CachePress`) drops vision slots of each KV head's cache after the prefill (`lvprune.core.protocols`
defines both; the core runs them and imports no method). `build(name, base_config, **options)` makes one for a
base model; the benchmark, `lvprune methods` and the lmms-eval adapter (`method=fastv`, `press=plphp`) read this
registry. A new method is one file here and one `register` line below.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal

from lvprune.core.protocols import CachePress, LayerInput, StagePruner
from lvprune.core.stages import StageSchedule


@dataclass(frozen=True)
class Method:
    """A registered method: `make(base_config, **options)` returns its stage pruner or cache press, defined in
    `module`."""

    name: str
    kind: Literal["stage", "press"]
    module: str
    make: Callable[..., object]
    summary: str
    paper: str | None = None

    def options(self) -> dict:
        """The method's options and their defaults (`inspect.Parameter.empty`: required)."""
        parameters = list(inspect.signature(self.make).parameters.values())[1:]
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def method(name: str) -> Method:
    """The registered method `name`; an unknown name is refused with the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(METHODS)}.")
    return METHODS[name]


def build(name: str, base_config, **options):
    """A stage pruner or a cache press of method `name` for a base model's config; options are the method's
    (`method(name).options()`), an unknown one refused with the list."""
    known = method(name).options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(known) or 'none'}.")
    return METHODS[name].make(base_config, **options)


# ---------------------------------------------------------------- the registered methods (each file's maker)


def _lvpruning(base_config, *, pruner):
    """A trained LVPruning pruner (a folder, a Hub id or an `LVPrunerModel`), checked against the base."""
    from lvprune.methods.lvpruning import LVPrunerModel

    model = pruner if isinstance(pruner, LVPrunerModel) else LVPrunerModel.from_pretrained(pruner)
    model.config.check_base(base_config)
    return model.eval()


def _random(base_config, *, keep_ratios=(0.5, 0.3, 0.1), after_layers=None, seed: int = 0):
    """Random pruning at `after_layers` (default: LVPruning's paper layers scaled to the base's depth)."""
    from lvprune.methods.lvpruning.config import scaled_after_layers
    from lvprune.methods.random_pruning import RandomPruner

    depth = getattr(base_config, "text_config", base_config).num_hidden_layers
    layers = after_layers if after_layers is not None else scaled_after_layers(depth, len(keep_ratios))
    return RandomPruner(StageSchedule(tuple(layers), tuple(keep_ratios), depth), seed=seed)


def _fastv(base_config, *, after_layer: int = 2, keep_ratio: float = 0.1):
    from lvprune.methods.fastv import FastVPruner

    return FastVPruner(base_config, after_layer=after_layer, keep_ratio=keep_ratio)


def _divprune(base_config, *, keep_ratio: float = 0.1):
    from lvprune.methods.divprune import DivPrunePruner

    return DivPrunePruner(base_config, keep_ratio=keep_ratio)


def _visionzip(base_config, *, keep_ratio: float = 64 / 576, contextual_share: float = 10 / 64):
    from lvprune.methods.visionzip import VisionZipPruner

    return VisionZipPruner(base_config, keep_ratio=keep_ratio, contextual_share=contextual_share)


def _dart(base_config, *, after_layer: int = 2, keep_ratio: float = 0.222, pivot_image: int = 4, pivot_text: int = 4):
    from lvprune.methods.dart import DARTPruner

    return DARTPruner(base_config, after_layer=after_layer, keep_ratio=keep_ratio, pivot_image=pivot_image,
                      pivot_text=pivot_text)


def _pyramid_drop(base_config, *, after_layers=None, keep_ratios=(0.5, 0.25, 0.125)):
    from lvprune.methods.pyramid_drop import PyramidDropPruner

    return PyramidDropPruner.for_base(base_config, after_layers=after_layers, keep_ratios=keep_ratios)


def _plphp(base_config, *, r: float = 0.4, delta_r: float = 0.3, alpha: float = 0.5, beta: float = 0.2,
           start_layer: int = 2, allocation: str = "sample", queries: str = "expected", query_rows: str = "text",
           statistics: str | None = None):
    from lvprune.methods.plphp import PLPHPPress, QueryStatistics

    return PLPHPPress(r=r, delta_r=delta_r, alpha=alpha, beta=beta, start_layer=start_layer, allocation=allocation,
                      queries=queries, query_rows=query_rows,
                      statistics=QueryStatistics.load(statistics) if statistics else None)


def _kvpress(base_config, *, scorer: str = "snapkv", compression_ratio: float = 0.6, start_layer: int = 2,
             scope: str = "vision"):
    from lvprune.methods.kvpress import KVPressScorer
    from lvprune.methods.kvpress import scorer as kvpress_scorer

    return KVPressScorer(kvpress_scorer(scorer, compression_ratio), scope=scope, start_layer=start_layer)


register(Method("lvpruning", "stage", "lvprune.methods.lvpruning", _lvpruning,
                "trained language-guided decision modules, removal in stages", "https://arxiv.org/abs/2501.13652"))
register(Method("random", "stage", "lvprune.methods.random_pruning", _random,
                "uniform random vision tokens at a stage schedule (a control)"))
register(Method("fastv", "stage", "lvprune.methods.fastv", _fastv,
                "the last prompt token's attention after layer K", "https://arxiv.org/abs/2403.06764"))
register(Method("divprune", "stage", "lvprune.methods.divprune", _divprune,
                "before the language model: the most diverse input embeddings (greedy max-min cosine distance)",
                "https://arxiv.org/abs/2503.02175"))
register(Method("visionzip", "stage", "lvprune.methods.visionzip", _visionzip,
                "VisionZip, before the language model: the tower's CLS-attended tokens, the rest merged into a few",
                "https://arxiv.org/abs/2412.04467"))
register(Method("dart", "stage", "lvprune.methods.dart", _dart,
                "DART: pivots by key norm, then the vision tokens least like each pivot", "https://arxiv.org/abs/2502.11494"))
register(Method("pdrop", "stage", "lvprune.methods.pyramid_drop", _pyramid_drop,
                "PyramidDrop: stages ranked by the last token's attention in the next layer",
                "https://arxiv.org/abs/2410.17247"))
register(Method("plphp", "press", "lvprune.methods.plphp", _plphp,
                "per-layer rates from vision attention, per-head top-k in the cache", "https://arxiv.org/abs/2502.14504"))
register(Method("kvpress", "press", "lvprune.methods.kvpress", _kvpress,
                "a kvpress scorer on the vision slots (needs kvpress)", "https://github.com/NVIDIA/kvpress"))

__all__ = ["METHODS", "Method", "build", "method", "register", "StagePruner", "CachePress", "LayerInput",
           "StageSchedule"]
