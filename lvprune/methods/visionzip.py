"""VisionZip: before the language model, keep the tokens the CLS token attends to most and merge the rest.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
https://arxiv.org/abs/2412.04467; official code dvlab-research/VisionZip, `visionzip/clip_encoder.py`
(`CLIPVisionTower_VisionZip.forward`) and `visionzip/utils.py` (`CLIPAttention_forward`, which keeps the layer's
keys averaged over heads as the merge metric). Per image, at the tower layer whose output LLaVA feeds the projector
(layer −2):
- **dominant** tokens: the patches with the largest CLS attention, summed over heads;
- **contextual** tokens: of the other patches (in index order), every `step = L // contextual`-th is a target
  (the first `contextual`); each remaining patch joins the target whose keys are most like its own (cosine of
  the head-averaged keys, `argmax`), and a target's token is its own hidden state plus the mean of those that
  joined it;
- the projector then maps both; dominant + contextual = the budget.

A stage pruner (`lvprune.core.protocols.StagePruner`) with one stage after layer 0: the rule runs in two forward
hooks on the tower (`attach_to`): one on the feature layer's attention reads the CLS attention and the keys from
the layer's input (the layer's own projections, `tower_queries_and_keys`), one on the projector replaces each
target row's projected feature by the projection of its merged token. The stage then keeps the dominant and
target rows, at their original positions, as every lvprune stage does. Where this differs from the official code:
- the CLS token is not passed on: a stock LLaVA prompt has no placeholder for it (`vision_feature_select_strategy`
  "default" drops it), so the budget's place for it goes to one more dominant patch; an image keeps
  `k = round(keep_ratio × N)` rows, `contextual = round(contextual_share × k)` (at least 1 when k ≥ 2, as the
  official split needs) and `dominant = k − contextual`; the official 64 = 54 + 10 (CLS among the 54), 128 =
  108 + 20, 192 = 162 + 30 give `contextual_share = 10/64`;
- rows keep their prompt positions (the official build repacks the sequence, as lvprune's stages do not);
- the layer is the model's `vision_feature_layer` (the official code reads layer −2, LLaVA-1.5's).

LLaVA-NeXT (official: `visionzip/llava_arch.py`, `prepare_inputs_labels_for_multimodal_visionzip` and
`restore_image_features_sorted`): every tile, the base view and each grid tile, is zipped on its own with the
same budget rule, as the official code runs the tower on all of them. The official build then lays the grid's
dominant tokens out without unpadding and without newlines, its contextual tokens and CLS tokens after them;
here the stock packing stays (`contract.anyres_rows`), so:
- a tile's patches that unpadding cuts have no row: the tile is zipped over the patches that reach the language
  model (n of them: `round(keep_ratio × n)` kept), and the cut ones neither rank, nor merge, nor are targets;
- `image_newline` rows are dropped, as the official build has none in a tiled image (at `keep_ratio` 1 every
  row stays: the stock model).

Supported where those inputs exist: LLaVA-1.5 and LLaVA-NeXT with a CLIP tower (a CLS token), one integer
feature layer, the "default" select strategy and one projector call on [tiles, N, C]; elsewhere
`VisionZipPruner` refuses, naming what is missing.

    with lvprune.pruning(model, VisionZipPruner(model.config, keep_ratio=64 / 576)):
        model.generate(**inputs)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lvprune.core.contract import anyres_rows, multimodal_projector, tower_queries_and_keys, vision_encoder_layers
from lvprune.core.protocols import StagePruner
from lvprune.core.stages import StageSchedule
from lvprune.families.llava import tile_features

CONTEXTUAL_SHARE = 10 / 64  # the official settings' split: 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192


def unsupported(base_config) -> str | None:
    """Why VisionZip cannot run on a base of this config, or None where it can."""
    vision = getattr(base_config, "vision_config", None)
    tower = getattr(vision, "model_type", None)
    if base_config.model_type not in ("llava", "llava_next") or tower != "clip_vision_model":
        return (f"VisionZip ranks by the CLS token's attention inside a CLIP tower whose features reach the "
                f"language model one row per patch (LLaVA-1.5, LLaVA-NeXT); {base_config.model_type!r} with a "
                f"{tower!r} tower has no such token or layout")
    if not isinstance(base_config.vision_feature_layer, int):
        return "VisionZip reads one tower layer; this config concatenates several (vision_feature_layer is a list)"
    if base_config.vision_feature_layer >= 0:
        return "VisionZip reads the tower layer given from the end (vision_feature_layer < 0, LLaVA-1.5's −2)"
    if base_config.vision_feature_select_strategy != "default":
        return ("VisionZip keeps patches; with vision_feature_select_strategy "
                f"{base_config.vision_feature_select_strategy!r} the CLS row reaches the language model too")
    return None


def split(tokens: int, keep_ratio: float, contextual_share: float = CONTEXTUAL_SHARE) -> tuple[int, int]:
    """(dominant, contextual) of an image of `tokens` patches: `k = round(keep_ratio × tokens)` in all."""
    kept = min(tokens, round(keep_ratio * tokens))
    contextual = max(1, round(contextual_share * kept)) if kept >= 2 else 0
    return kept - contextual, contextual


def cls_attention(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """The CLS token's attention to every patch, summed over heads: query/key [I, H, 1 + N, d] -> [I, N]."""
    logits = (query[:, :, :1].float() @ key.float().transpose(-1, -2)) * scale  # [I, H, 1, 1 + N]
    return logits.softmax(-1)[:, :, 0, 1:].sum(1)


def zip_plan(attention: torch.Tensor, metric: torch.Tensor, dominant: int, contextual: int):
    """Which patches stay and how the rest merge, per image: attention [I, N] (`cls_attention`), metric
    [I, N, d] (the patches' keys averaged over heads). -> dominant [I, D] and targets [I, C] patch indices, and
    assign [I, N, C] float: 1 where a merged patch joins a target (rows of kept patches are 0)."""
    images, tokens = attention.shape
    top = attention.topk(dominant, dim=1).indices if dominant else attention.new_zeros(images, 0, dtype=torch.long)
    rest = torch.ones(images, tokens, dtype=torch.bool, device=attention.device).scatter(1, top, False)
    others = rest.nonzero()[:, 1].view(images, tokens - dominant)  # [I, L]: the other patches, index order
    if contextual == 0:
        return top, others[:, :0], attention.new_zeros(images, tokens, 0)
    step = max(1, others.shape[1] // contextual)
    picks = torch.arange(0, others.shape[1], step, device=attention.device)[:contextual]
    targets = others[:, picks]  # [I, C]
    merged = others[:, ~torch.isin(torch.arange(others.shape[1], device=attention.device), picks)]  # [I, M]
    unit = F.normalize(metric.float(), dim=-1)
    similarity = unit.gather(1, merged[..., None].expand(-1, -1, unit.shape[-1])) @ \
        unit.gather(1, targets[..., None].expand(-1, -1, unit.shape[-1])).transpose(1, 2)  # [I, M, C]
    assign = attention.new_zeros(images, tokens, contextual)
    assign.scatter_(1, merged[..., None].expand(-1, -1, contextual),
                    F.one_hot(similarity.argmax(-1), contextual).float())
    return top, targets, assign


def contextual_tokens(features: torch.Tensor, targets: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """A target's token: its own feature plus the mean of the features that joined it. features [I, N, C],
    targets [I, K] long, assign [I, N, K] -> [I, K, C]."""
    counts = assign.sum(1).clamp(min=1)[..., None]  # [I, K, 1]
    joined = assign.transpose(1, 2).to(features.dtype) @ features / counts.to(features.dtype)
    return features.gather(1, targets[..., None].expand(-1, -1, features.shape[-1])) + joined


class VisionZipPruner(StagePruner):
    """VisionZip: one stage after layer 0 keeping, per tile (an image, or one of LLaVA-NeXT's tiles), its dominant
    and (merged) contextual tokens, `round(keep_ratio × n)` rows of its n patches that reach the language model."""

    inputs = ("vision_valid",)  # the ratio is fixed when the hooks attach: the tower runs before the stage

    def __init__(self, base_config, keep_ratio: float = 64 / 576, contextual_share: float = CONTEXTUAL_SHARE):
        reason = unsupported(base_config)
        if reason is not None:
            raise ValueError(f"VisionZip cannot run on this model: {reason}.")
        super().__init__(StageSchedule.for_base(base_config, [0], [keep_ratio]))
        self.tokens = tile_features(base_config, check=True)  # patches per tile (CLS dropped by "default")
        self.anyres = base_config.model_type == "llava_next"
        self.feature_layer = base_config.vision_feature_layer
        self.contextual_share = contextual_share
        self._ratio = keep_ratio  # the ratio the attached model's calls apply (`attach_to`)
        self._layout = None  # LLaVA-NeXT: (image_sizes) -> rows per image (`contract.anyres_rows`), bound in attach_to
        self._image_sizes = None  # LLaVA-NeXT: the call's image_sizes [images, 2]
        self._pending = None  # (attention [T, N], metric [T, N, d]) of the tower call in flight
        self._scores = None  # [rows]: 2 dominant, 1 target, 0 merged, dropped or newline, the images' rows in order
        self._images = None  # per image: (its vision rows, the rows it keeps), for `stage_counts`

    def stage_counts(self, num_vision: list[int], ratio: float) -> list[int]:
        """A sample keeps the rows its images keep (`ratio` >= 1: every row, newlines included)."""
        images = self._images or []  # the latest tower call's (a call without images consumes none)
        if ratio >= 1:
            return list(num_vision)
        counts, walk = [], iter(images)
        for n in num_vision:
            rows = kept = 0
            while rows < n:
                more, keep = next(walk)
                rows, kept = rows + more, kept + keep
            counts.append(kept)
        return counts

    # ---------------------------------------------------------------- the tower's hooks

    def attach_to(self, model: nn.Module, keep_ratios) -> list:
        """Hooks on the feature layer's attention and on the projector, merging for the stage's ratio
        `keep_ratios[0]` (the tower runs before the stage, so the split is fixed here), and on LLaVA-NeXT one on
        the model's forward for the call's `image_sizes`; the caller removes them."""
        self._ratio = float(keep_ratios[0])
        layers = vision_encoder_layers(model)
        if layers is None:
            raise ValueError(f"VisionZip cannot find {type(model).__name__}'s CLIP encoder layers.")
        attention = layers[self.feature_layer].self_attn
        handles = [attention.register_forward_pre_hook(self._read_layer, with_kwargs=True),
                   multimodal_projector(model).register_forward_hook(self._merge)]
        if self.anyres:
            self._layout = lambda sizes, tiles: anyres_rows(model, sizes, tiles, self.tokens)
            handles.append(model.register_forward_pre_hook(lambda module, args, kwargs: self.read_call(kwargs),
                                                           with_kwargs=True))
        return handles

    def read_call(self, inputs: dict) -> None:
        """A forward's or `generate`'s keyword inputs, before the tower runs: LLaVA-NeXT's `image_sizes`."""
        if self.anyres and inputs.get("pixel_values") is not None:
            self._image_sizes = inputs.get("image_sizes")

    def _read_layer(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [T, 1 + N, C]
        with torch.no_grad():
            query, key, scale = tower_queries_and_keys(module, hidden)
            self._pending = cls_attention(query, key, scale), key[:, :, 1:].float().mean(1)

    def _rows(self, tiles: int) -> list[torch.Tensor]:
        """Per image, the flat tile-patch index of each of its vision rows (-1: a newline)."""
        if not self.anyres:
            return list(torch.arange(tiles * self.tokens).view(tiles, self.tokens))
        if self._image_sizes is None:
            raise RuntimeError("VisionZip on LLaVA-NeXT reads the call's image_sizes: pass them to the model.")
        sizes, self._image_sizes = self._image_sizes, None
        return self._layout(sizes, tiles)

    def _merge(self, module, args, output):
        features = args[0]  # [T, N, C_vision]: the feature layer's patches of every tile
        if self._pending is None or features.shape[:2] != (self._pending[0].shape[0], self.tokens):
            raise RuntimeError(f"VisionZip expected the projector to receive [tiles, {self.tokens}, C] right after "
                               f"the tower, got {tuple(features.shape)}.")
        (attention, metric), self._pending = self._pending, None
        rows = [r.to(features.device) for r in self._rows(features.shape[0])]
        flat = torch.cat(rows)
        present = torch.zeros(attention.numel(), dtype=torch.bool, device=features.device)
        present = present.scatter(0, flat[flat >= 0], True).view(attention.shape)  # patches with a row
        scores, output = attention.new_zeros(attention.shape), output.clone()
        sizes = present.sum(1)
        for size in sizes.unique().tolist():  # tiles with as many patches left run together
            tiles = (sizes == size).nonzero()[:, 0]
            self._zip(module, tiles, present[tiles].nonzero()[:, 1].view(len(tiles), size), features, attention,
                      metric, scores, output)
        packed = [torch.where(r >= 0, scores.flatten()[r.clamp(min=0)], 0.0) for r in rows]
        self._scores = torch.cat(packed)
        kept = torch.stack([(p > 0).sum() for p in packed]).tolist()  # one host read for every image
        self._images = list(zip([len(r) for r in rows], kept))
        return output

    def _zip(self, projector, tiles, patches, features, attention, metric, scores, output) -> None:
        """VisionZip on `tiles` [g] over their `patches` [g, s] (tile-local indices, index order): marks `scores`
        [T, N] and writes the targets' merged projections into `output` [T, N, C_out], both in place."""
        if patches.shape[1] == 0:
            return
        dominant, contextual = split(patches.shape[1], self._ratio, self.contextual_share)
        top, targets, assign = zip_plan(attention[tiles].gather(1, patches),
                                        metric[tiles].gather(1, patches[..., None].expand(-1, -1, metric.shape[-1])),
                                        dominant, contextual)
        marks = scores[tiles].scatter(1, patches.gather(1, top), 2.0)
        scores[tiles] = marks.scatter(1, patches.gather(1, targets), 1.0)
        if contextual == 0:
            return
        own = features[tiles].gather(1, patches[..., None].expand(-1, -1, features.shape[-1]))  # [g, s, C]
        merged = projector.forward(contextual_tokens(own, targets, assign))  # `forward`: not this hook again
        where = patches.gather(1, targets)[..., None].expand(-1, -1, output.shape[-1])
        output[tiles] = output[tiles].scatter(1, where, merged.to(output.dtype))

    # ---------------------------------------------------------------- the stage

    def forward(self, stage, vision, text, text_mask, vision_valid=None, **_):
        if vision_valid is None:
            raise RuntimeError("VisionZipPruner needs the core's vision_valid: run it through lvprune.pruning().")
        score = torch.full(vision.shape[:2], -1.0, device=vision.device)
        present = int(vision_valid.sum())  # the stage's one host read
        if present == 0:
            return self.as_gamma(score)
        if self._scores is None or self._scores.numel() != present:
            raise RuntimeError("VisionZip's tower hooks did not see this call's images: attach it with "
                               "lvprune.pruning(model, pruner) (or LVPruningForTraining), which installs them.")
        score[vision_valid] = self._scores.to(score.device)  # images in prompt order, rows as packed
        self._scores = None
        return self.as_gamma(score)
