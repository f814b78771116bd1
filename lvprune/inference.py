"""Pruned decoding on a stock LLaVA: LVPruning's top-k removal and PLPHP's per-head KV pruning.

    with lvprune.pruning(model, pruner, plphp=PLPHPConfig()):
        model.generate(**inputs)

or `model = lvprune.load_pruned_model(base, pruner, plphp=...)`, undone with `lvprune.unprune(model)`.
A forward pre-hook on the model creates a `PruningState` and a `PrunedCache` at each prefill and hands the
state on at every decode step; after each prefill `model.pruning_stats` describes what was kept.
"""

from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn

from .cache import PrunedCache
from .config import check_stages
from .backbones import backbone_for
from .contract import DynamicCache, cache_kwarg, decoder_layers, pop_cache, text_config
from .generation import CheckedGenerate
from .hooks import STATE_KWARG, LayerHooks
from .modeling import LVPrunerModel
from .plphp import PLPHPConfig
from .press import CachePress
from .scoring import pruned_loss
from .state import PruningState
from .stats import PruningStats


class Pruning:
    """LVPruning (with `pruner`) and/or PLPHP (with `plphp`, or any cache press with `press`) on a loaded `model`.

    Args:
        model: a model of a supported family (`lvprune.backbones`), e.g. a `LlavaForConditionalGeneration`.
        pruner: an `LVPrunerModel` built for this base, or None (no LVPruning).
        keep_ratios: stage ratios to apply instead of the pruner's training ratios (no retraining needed).
        plphp: a `PLPHPConfig`, or None (no PLPHP).
        press: another `CachePress` instead of PLPHP (`plphp` and `press` fill the same place).
    """

    def __init__(self, model: nn.Module, pruner: LVPrunerModel | None = None, *, keep_ratios=None,
                 plphp: PLPHPConfig | None = None, press: CachePress | None = None):
        if pruner is not None:
            pruner.config.check_base(model.config)
            keep_ratios = list(keep_ratios) if keep_ratios is not None else pruner.config.keep_ratios
            check_stages(pruner.config.after_layers, keep_ratios, pruner.config.num_hidden_layers)
            pruner.eval()
        elif keep_ratios is not None:
            raise ValueError("keep_ratios needs a pruner: they are the ratios of its stages.")
        if plphp is not None and not isinstance(plphp, PLPHPConfig):
            raise TypeError(f"plphp must be a PLPHPConfig or None, got {type(plphp).__name__}.")
        if press is not None and not isinstance(press, CachePress):
            raise TypeError(f"press must be a CachePress or None, got {type(press).__name__}.")
        if plphp is not None and press is not None:
            raise ValueError("pass plphp or another press, not both: a cache is pressed once.")
        self.model, self.pruner, self.keep_ratios = model, pruner, keep_ratios
        self.press = plphp if plphp is not None else press
        self.num_layers = len(decoder_layers(model))
        if self.press is not None and self.press.start_layer >= self.num_layers:
            raise ValueError(f"{type(self.press).__name__} start_layer={self.press.start_layer} is at or beyond the "
                             f"model's depth ({self.num_layers} layers, 0-based): it would prune nothing.")
        self.cache_kwarg = cache_kwarg(model)
        layer_inputs = self.press is not None and not self.press.ranks_by_attention
        self.hooks = LayerHooks(model, pruner, layer_inputs=layer_inputs)
        self.handles = []

    def attach(self) -> "Pruning":
        """Start pruning every `forward` / `generate` of the model."""
        if getattr(self.model, "lvprune", None) is not None:
            raise RuntimeError("this model is already pruned; call lvprune.unprune(model) first.")
        self.hooks.attach()
        self.handles.append(self.model.register_forward_pre_hook(self._before_call, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._after_call, with_kwargs=True))
        # generate() settings a pruned cache cannot honour are refused before generation starts.
        self.model.generate = CheckedGenerate(self.model)
        self.model.lvprune = self
        return self

    def detach(self) -> nn.Module:
        """Restore the stock model (same object) and return it."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.hooks.detach()
        if isinstance(self.model.__dict__.get("generate"), CheckedGenerate):
            del self.model.generate  # the class's own method again
        self.model.lvprune = None
        return self.model

    __enter__ = attach

    def __exit__(self, *exc) -> None:
        self.detach()

    # ---------------------------------------------------------------- per call

    def _before_call(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("a pruned model needs input_ids: vision positions are its image and video placeholder ids.")
        labels = kwargs.pop("labels", None)  # scored here, over the kept rows (lvprune.scoring)
        cache = pop_cache(kwargs)
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(f"a pruned model keeps its own cache; do not pass a {type(cache).__name__} "
                             "(for generate: drop cache_implementation).")
        if isinstance(cache, PrunedCache) and cache.state is not None and cache.get_seq_length() > 0:
            if labels is not None:
                raise ValueError("labels score a whole prompt in one forward; pass them without a cache.")
            state = cache.state
            mask = kwargs.get("attention_mask")
            new = input_ids.shape[1]
            if new > 1:
                warn_if_pressed_for_another_question(state.press)
            state.begin_decode(mask[:, -new:] if mask is not None else torch.ones_like(input_ids))
        else:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("a pruned model cannot continue from a cache it did not make; pass no cache.")
            if labels is not None and kwargs.get("logits_to_keep") not in (None, 0):
                raise ValueError("labels need the logits of every kept row: drop logits_to_keep.")
            use_cache = cache is not None or kwargs.get("use_cache", text_config(self.model).use_cache)
            state = self._new_state(input_ids, kwargs, use_cache is not False, labels)
        # Handed back under the name this transformers release reads (lvprune.contract).
        kwargs[self.cache_kwarg] = state.cache
        kwargs[STATE_KWARG] = state
        return args, kwargs

    def _new_state(self, input_ids, kwargs, use_cache: bool, labels) -> PruningState:
        if self.pruner is not None and _device(self.pruner) not in (None, input_ids.device):
            # Only when needed: walking the modules' parameters costs ~3 ms, a tenth of a small model's prefill.
            self.pruner.to(input_ids.device)
        cache = PrunedCache(config=text_config(self.model)) if use_cache else None
        state = PruningState(
            input_ids, kwargs.get("attention_mask"), self.hooks.vision_ids, self.num_layers, labels=labels,
            pruner=self.pruner, keep_ratios=self.keep_ratios, sample=False, remove=True, press=self.press,
            cache=cache, base_attention=self.hooks.base_attention,
        )
        if cache is not None:
            cache.state = state
        return state

    def _after_call(self, module, args, kwargs, output):
        state = kwargs.get(STATE_KWARG)
        if state is None or not state.prefill:
            return output
        if state.cache is not None:
            state.end_prefill()
        self.model.pruning_stats = PruningStats(state)
        if state.labels is not None:
            loss = pruned_loss(output.logits, state.labels, state.rows.order[:, 0], state.rows.valid[:, 0])
            fields = {name: value for name, value in output.items() if name != "loss"}
            output = type(output)(loss=loss, **fields)
        return output


def warn_if_pressed_for_another_question(press: CachePress | None) -> None:
    """Warn when a cache pressed by the last prompt token's attention takes new prompt tokens (a follow-up
    question, or a question after a prefix cache): the slots the new question needs may be gone."""
    if press is None or not press.ranks_by_attention or press.queries != "last":
        return
    warnings.warn(
        f"this cache was pressed by {type(press).__name__}(queries='last'), for the question that ended its prompt, "
        "and now takes new prompt tokens: the slots a new question needs may be gone (a second turn served this "
        "way scores below random choice of the same slots, docs/benchmarks.md). For a cache that will take more "
        "prompt tokens (a chat, a prefix cache), press with queries='all'.", UserWarning, stacklevel=3)


def _device(module: nn.Module) -> torch.device | None:
    """Where `module`'s first parameter or buffer lives (None for a module without tensors)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if tensor is None else tensor.device


def pruning(model: nn.Module, pruner: LVPrunerModel | None = None, *, keep_ratios=None,
            plphp: PLPHPConfig | None = None, press: CachePress | None = None) -> Pruning:
    """Context manager: `with pruning(model, pruner, plphp=PLPHPConfig()): model.generate(...)`."""
    return Pruning(model, pruner, keep_ratios=keep_ratios, plphp=plphp, press=press)


def unprune(model: nn.Module) -> nn.Module:
    """Undo `load_pruned_model` / `Pruning.attach`: the same object, back to the stock model."""
    handle = getattr(model, "lvprune", None)
    if handle is None:
        raise ValueError("this model is not pruned by lvprune.")
    return handle.detach()


def load_pruned_model(base, pruner=None, *, keep_ratios=None, plphp: PLPHPConfig | None = None,
                      press: CachePress | None = None, **kwargs):
    """Load a vision-language model whose `forward` and `generate` prune vision tokens.

    Args:
        base: a path, a Hub id or a loaded model of a supported family (loaded with
            `AutoModelForImageTextToText`; an unsupported family is refused before its weights load).
        pruner: a path, a Hub id, an `LVPrunerModel`, or None (no LVPruning).
        keep_ratios: inference ratios for the pruner's stages (default: its training ratios).
        plphp: a `PLPHPConfig`, or None; press: another `CachePress` instead.
        **kwargs: passed to `from_pretrained` of the base (`dtype`, `device_map`, ...); the pruner follows the
            base's dtype and device.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
        backbone_for(AutoConfig.from_pretrained(base, **_config_kwargs(kwargs)))
        base = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    base.eval()
    if pruner is not None and not isinstance(pruner, LVPrunerModel):
        pruner = LVPrunerModel.from_pretrained(pruner)
    if pruner is not None:
        pruner.config.check_base(base.config)
        pruner.to(device=base.device, dtype=base.dtype)
    Pruning(base, pruner, keep_ratios=keep_ratios, plphp=plphp, press=press).attach()
    return base


def _config_kwargs(kwargs: dict) -> dict:
    """The `from_pretrained` arguments that also locate a config (revision, cache, token, ...)."""
    keys = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")
    return {key: kwargs[key] for key in keys if key in kwargs}
