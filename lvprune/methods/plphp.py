"""PLPHP: training-free per-layer, per-head pruning of the vision tokens in the KV cache (METHOD §3).

Meng et al., "PLPHP: Per-Layer Per-Head Vision Token Pruning for Efficient Large Vision-Language Models", 2025,
https://arxiv.org/abs/2502.14504. A cache press (`lvprune.core.protocols.CachePress`).

After the prefill of each layer `l >= start_layer`, the last prompt token's attention decides:
1. the layer's class from its vision attention `v_l = mean_h Σ_{j∈I_V} a_hj` (per sample):
   `v_l >= alpha` attentive (rate `r + Δr`), `v_l <= beta` indifferent (`r − Δr`), else balanced (`r`);
2. each KV head keeps its own top `ceil(rate × n_vision)` vision tokens; text tokens always stay.

The paper publishes neither `alpha`/`beta` nor the first pruned layer: `vision_attention_profile` runs prompts
through a model with a press that keeps everything and records every sample's `v_l` at every layer, and
`suggest_thresholds` turns that profile into thresholds that split the (sample, layer) pairs into thirds. By
default the attention is the one the queries to come are expected to pay (`queries="expected"`, fitted to each
prompt's text rows); `query_statistics` gathers those queries over calibration prompts instead, once per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from typing import Literal

import torch

from lvprune.core.attention import SINKS, query_moments
from lvprune.core.protocols import CachePress
from lvprune.utils.command_line import doc

CLASSES = ("indifferent", "balanced", "attentive")
Allocation = Literal["sample", "batch"]
Queries = Literal["last", "all", "expected"]
QueryRows = Literal["text", "all"]
ALLOCATIONS = Allocation.__args__
QUERIES = Queries.__args__
QUERY_ROWS = QueryRows.__args__


@dataclass(frozen=True)
class QueryStatistics:
    """The queries to come, gathered on calibration prompts (`query_statistics`): per decoder layer and query head,
    the mean and covariance of the queries before RoPE of the prompts' text rows beyond the attention sinks (every
    row beyond them with `query_rows="all"`).

    Args:
        mean: [L, Hq, D].
        covariance: [L, Hq, D, D].
        rows: how many prompt rows they were gathered over.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    rows: int

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [Hq, D] and covariance [Hq, D, D] of 0-based decoder layer `layer`."""
        if not 0 <= layer < self.mean.shape[0]:
            raise ValueError(f"these query statistics hold {self.mean.shape[0]} decoder layers, not layer {layer}: "
                             "gather them on the model they press (query_statistics).")
        return self.mean[layer], self.covariance[layer]

    def save(self, path) -> None:
        """One safetensors file (the tensors, and `rows` in its metadata)."""
        from safetensors.torch import save_file

        save_file({"mean": self.mean.contiguous(), "covariance": self.covariance.contiguous()}, str(path),
                  metadata={"rows": str(self.rows)})

    @classmethod
    def load(cls, path) -> "QueryStatistics":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            return cls(file.get_tensor("mean"), file.get_tensor("covariance"), int(file.metadata()["rows"]))


@dataclass(frozen=True)
class PLPHPPress(CachePress):
    """PLPHP as a cache press, with its hyper-parameters.

    Args:
        r: base retention rate of vision tokens (paper sweeps 0.3, 0.4, 0.5).
        delta_r: rate shift for vision-attentive (+) and vision-indifferent (−) layers (paper: 0.3).
        alpha: vision attention at or above which a layer is vision-attentive.
        beta: vision attention at or below which a layer is vision-indifferent (`beta < alpha`).
        start_layer: first 0-based decoder layer whose cache is pruned; earlier layers keep everything.
            The paper publishes neither the thresholds nor this layer; `vision_attention_profile` measures
            them for a model (see docs/choices.md).
        allocation: `"sample"` (the paper's): each sample keeps `ceil(rate × n)` per head from its own layer
            class. `"batch"`: every sample of a batch keeps the same count per layer, the mean of their counts
            (rounded up), so a batch's rectangular cache holds no filler slots for samples that keep fewer; the
            total kept is the per-sample allocation's to within one token per sample (less where a sample has
            fewer vision tokens than the mean).
        queries: whose attention classifies the layers and ranks the slots. `"expected"` (the default): the
            attention the queries to come are expected to pay (kvpress's ExpectedAttention: a Gaussian model of
            the prompt's queries rotated to the positions after it; slots ranked by it times their values' norms),
            which holds when the cache takes more prompt tokens: a chat's next question, a question after a prefix
            cache. `"last"` (the paper's): the last prompt token, the query of a prompt that ends with the
            question; best for one-shot prompts, and a later question finds the slots it needs gone (a warning
            says so). `"all"`: the mean over every prompt query (docs/choices.md).
        query_rows: with `queries="expected"`, whose queries model the queries to come. `"text"` (the default):
            the prompt's language rows beyond the attention sinks, as what follows a prompt is text (a question, an
            answer); a prompt with none (an image-only prefix) falls back to every row. `"all"`: every row beyond
            the sinks, as kvpress's ExpectedAttentionPress takes them; where vision rows are most of the prompt
            their queries set the Gaussian, and on a multi-image base that ranks below a random choice
            (docs/choices.md).
        statistics: with `queries="expected"`, the queries to come as gathered beforehand on calibration prompts
            (`query_statistics`), in place of each prompt's own fit: what an image-only prefix cache needs, as it
            holds no question to fit them to (kvpress's ExpectedAttentionStatsPress does the same for text).
    """

    r: float = 0.4
    delta_r: float = 0.3
    alpha: float = 0.5
    beta: float = 0.2
    start_layer: int = 2
    allocation: str = "sample"
    queries: str = "expected"
    query_rows: str = "text"
    statistics: QueryStatistics | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.r <= 1.0:
            raise ValueError(f"PLPHP r={self.r} must be in [0, 1].")
        if not 0.0 <= self.delta_r <= 1.0:
            raise ValueError(f"PLPHP delta_r={self.delta_r} must be in [0, 1].")
        if not 0.0 <= self.beta < self.alpha <= 1.0:
            raise ValueError(f"PLPHP thresholds need 0 <= beta < alpha <= 1, got alpha={self.alpha}, beta={self.beta}.")
        if self.start_layer < 0:
            raise ValueError(f"PLPHP start_layer={self.start_layer} must be >= 0.")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"PLPHP allocation={self.allocation!r} is not one of {ALLOCATIONS}.")
        if self.queries not in QUERIES:
            raise ValueError(f"PLPHP queries={self.queries!r} is not one of {QUERIES}.")
        if self.query_rows not in QUERY_ROWS:
            raise ValueError(f"PLPHP query_rows={self.query_rows!r} is not one of {QUERY_ROWS}.")
        if self.statistics is not None and self.queries != "expected":
            raise ValueError(f"PLPHP statistics model the queries to come: they need queries='expected', "
                             f"not {self.queries!r}.")

    def query_gaussian(self, layer: int):
        """The gathered statistics' layer, if given (`CachePress.query_gaussian`)."""
        return None if self.statistics is None else self.statistics.layer(layer)

    def to_dict(self) -> dict:
        """The fields by name (`statistics` as the object itself)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def class_rates(self) -> tuple[Fraction, Fraction, Fraction]:
        """Exact rates of the indifferent, balanced and attentive classes: `r − Δr`, `r`, `r + Δr` in [0, 1].

        Exact as the user wrote them (`Fraction("0.4")` is 2/5): in float32 0.4 is 0.4000000059604645, and
        `ceil(0.4 × 25)` would keep 11 tokens, not 10.
        """
        r, delta = Fraction(repr(self.r)), Fraction(repr(self.delta_r))
        return tuple(min(max(r + k * delta, Fraction(0)), Fraction(1)) for k in (-1, 0, 1))

    def classes(self, vision_attention: torch.Tensor) -> torch.Tensor:
        """Layer class (0 indifferent, 1 balanced, 2 attentive): vision_attention [B] -> [B] long."""
        cls = torch.ones_like(vision_attention, dtype=torch.long)
        return torch.where(vision_attention >= self.alpha, 2, torch.where(vision_attention <= self.beta, 0, cls))

    def rates(self, vision_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer class and its rate (as a float, for reporting): vision_attention [B] -> [B] long, [B] float."""
        cls = self.classes(vision_attention)
        table = torch.tensor([float(q) for q in self.class_rates()], device=cls.device)
        return cls, table[cls]

    # ---------------------------------------------------------------- as a cache press

    def describe(self, figures: dict) -> dict:
        """The layer's class by name, its rate and `v_l`, one entry per sample."""
        described = super().describe(figures)
        described["plphp_class"] = [CLASSES[c] for c in described["plphp_class"]]
        return described

    def vision_counts(self, scores: torch.Tensor, vision: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """`ceil(rate × n)` per head, the rate from the layer's class, and the class, rate and `v_l` per sample:
        scores [B, Hkv, K], vision [B, 1, K] -> [B], stats."""
        attention = vision_attention(scores, vision)
        cls, rate = self.rates(attention)
        stats = dict(plphp_class=cls, plphp_rate=rate, vision_attention=attention)
        return self.counts(cls, vision.sum(-1)[:, 0]), stats

    def counts(self, cls: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Vision tokens each KV head keeps, exactly `ceil(rate × present)` (`allocation="sample"`), or that count's
        mean over the samples with vision tokens, rounded up (`"batch"`): cls, present [B] long -> [B] long."""
        rates = self.class_rates()
        numerator = torch.tensor([q.numerator for q in rates], device=cls.device)[cls]
        denominator = torch.tensor([q.denominator for q in rates], device=cls.device)[cls]
        counts = -((-numerator * present) // denominator)  # integer ceil division
        if self.allocation == "sample":
            return counts
        has_vision = present > 0
        shared = -((-counts.sum()) // has_vision.sum().clamp(min=1))  # ceil of the mean, on the device
        return torch.where(has_vision, torch.minimum(shared, present), 0)


def vision_attention(scores: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    """The layer's `v_l = mean_h Σ_{j∈I_V} a_hj` per sample: scores [B, Hkv, K], vision [B, 1, K] -> [B]."""
    return (scores * vision).sum(-1).mean(-1)


@dataclass
class PLPHPOptions:
    """PLPHP's settings as named command-line and YAML fields (`--plphp_r 0.5 --plphp_delta_r 0.3`), for the
    configs of the entry points that run PLPHP; a field left unset takes `PLPHPPress`'s default."""

    plphp_r: float | None = doc(None, "PLPHP's base retention rate r of vision tokens (unset: 0.4)")
    plphp_delta_r: float | None = doc(None, "PLPHP's rate shift for vision-attentive (+) and -indifferent (-) "
                                      "layers (unset: 0.3)")
    plphp_alpha: float | None = doc(None, "PLPHP's vision attention at or above which a layer is attentive "
                                    "(unset: 0.5)")
    plphp_beta: float | None = doc(None, "PLPHP's vision attention at or below which a layer is indifferent "
                                   "(unset: 0.2)")
    plphp_start_layer: int | None = doc(None, "first 0-based decoder layer whose cache PLPHP prunes (unset: 2)")
    plphp_allocation: Allocation | None = doc(None, "PLPHP's per-sample counts (sample, the paper's) or one count "
                                              "per batch (unset: sample)")
    plphp_queries: Queries | None = doc(None, "whose attention ranks PLPHP's slots: the last prompt token (last, "
                                        "the paper's), every prompt query (all) or the queries to come (expected) "
                                        "(unset: expected)")
    plphp_query_rows: QueryRows | None = doc(None, "with expected: whose prompt rows model the queries to come, "
                                             "the text rows (text) or every row (all, kvpress's) (unset: text)")
    plphp_statistics: str | None = doc(None, "with expected: a file of the queries to come gathered on calibration "
                                       "prompts (QueryStatistics.save) (unset: each prompt's own)")

    def plphp_options(self) -> dict:
        """The PLPHP fields that are set, by their field names."""
        return {item.name: getattr(self, item.name) for item in fields(PLPHPOptions)
                if getattr(self, item.name) is not None}

    def plphp_press(self) -> PLPHPPress | None:
        """The `PLPHPPress` these fields describe (None when none is set)."""
        given = {name.removeprefix("plphp_"): value for name, value in self.plphp_options().items()}
        if "statistics" in given:
            given["statistics"] = QueryStatistics.load(given["statistics"])
        return PLPHPPress(**given) if given else None


# ---------------------------------------------------------------- measuring the thresholds on a model

MEASURE_ALL = PLPHPPress(r=1.0, delta_r=0.0, alpha=1.0, beta=0.0, start_layer=0)


@torch.no_grad()
def vision_attention_profile(model, batches, queries: str = "last") -> torch.Tensor:
    """v_l of every image-holding sample of `batches` (dicts of model inputs) at every layer, by the attention of
    `queries` (`PLPHPPress.queries`): -> [samples, layers]."""
    from lvprune.core.pruning import Pruning

    rows = []
    with Pruning(model, press=replace(MEASURE_ALL, queries=queries)):
        for batch in batches:
            model(**batch)
            per_layer = [layer.extras["vision_attention"] for layer in model.pruning_stats.layers]
            has_vision = torch.tensor(model.pruning_stats.layers[0].vision_tokens) > 0
            rows.append(torch.tensor(per_layer).T[has_vision])
    return torch.cat(rows)


def suggest_thresholds(profile: torch.Tensor, start_layer: int = 2) -> dict:
    """`alpha`/`beta` at the 2/3 and 1/3 quantiles of the profile's layers from `start_layer` on."""
    values = profile[:, start_layer:].flatten().float()
    beta, alpha = torch.quantile(values, torch.tensor([1 / 3, 2 / 3])).tolist()
    # Four decimals: a question-agnostic profile can crowd near 1 (0.9996 and 0.9631), where three would merge
    # the thresholds.
    return dict(alpha=round(alpha, 4), beta=round(beta, 4), start_layer=start_layer,
                per_layer_mean=[round(v, 3) for v in profile.float().mean(0).tolist()])


@dataclass(frozen=True)
class _QueryMoments(PLPHPPress):
    """Keeps every slot and sums, per layer, the modelling rows' queries before RoPE (`query_moments`)."""

    sums: dict = field(default_factory=dict, compare=False, repr=False)

    def observe_queries(self, layer, query, valid, tables, rows):
        moments = query_moments(query, valid, tables, rows)
        held = self.sums.get(layer)
        self.sums[layer] = moments if held is None else tuple(a + b for a, b in zip(held, moments))


@torch.no_grad()
def query_statistics(model, batches, query_rows: str = "text") -> QueryStatistics:
    """The queries to come as `PLPHPPress(statistics=...)` takes them, gathered over `batches` (dicts of model
    inputs: whole prompts that end with a question, as the queries to come are text): per decoder layer and query
    head, the mean and covariance of the queries before RoPE of their rows that `query_rows` names (the text rows
    beyond the sinks by default) -> QueryStatistics. Run it once per model; save and load it with the class."""
    from lvprune.core.pruning import Pruning

    recorder = _QueryMoments(**{**MEASURE_ALL.to_dict(), "queries": "expected", "query_rows": query_rows})
    with Pruning(model, press=recorder):
        for batch in batches:
            model(**batch)
    layers = [recorder.sums[layer] for layer in sorted(recorder.sums)]
    if not layers or int(layers[0][0]) == 0:
        raise ValueError(f"query_statistics found no {query_rows} rows beyond the first {SINKS} of any prompt: pass "
                         "batches of model inputs, whole prompts that end with a question.")
    mean = torch.stack([total / count for count, total, _ in layers])  # [L, Hq, D]
    outer = torch.stack([second / count for count, _, second in layers])  # [L, Hq, D, D]
    covariance = outer - mean[..., :, None] * mean[..., None, :]  # in float64, so the difference keeps its digits
    return QueryStatistics(mean.float(), covariance.float(), int(layers[0][0]))


def __getattr__(name: str):
    if name == "PLPHPConfig":  # the name of lvprune 0.1
        import warnings

        warnings.warn("PLPHPConfig is now PLPHPPress (the same class); the old name goes in lvprune 0.3.",
                      FutureWarning, stacklevel=2)
        return PLPHPPress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
