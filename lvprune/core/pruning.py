"""Pruned decoding on a stock model: a stage pruner's row removal and a cache press's per-head KV pruning.

    with lvprune.pruning(model, pruner, press=PLPHPPress()):
        model.generate(**inputs)

or `model = lvprune.load_pruned_model(base, pruner, press=...)` (`lvprune.serving`), undone with
`lvprune.unprune(model)`. A forward pre-hook on the model creates a `PruningState` and a `PrunedCache` at each
prefill and hands the state on at every decode step; after each prefill `model.pruning_stats` describes what was
kept. docs/architecture.md walks one `generate()` through it.
"""

from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn

from lvprune.core.contract import DynamicCache, cache_kwarg, decoder_layers, pop_cache, text_config
from lvprune.core.generate_checks import CheckedGenerate
from lvprune.core.layer_hooks import STATE_KWARG, LayerHooks
from lvprune.core.protocols import CachePress
from lvprune.core.pruned_cache import PrunedCache
from lvprune.core.pruned_loss import pruned_loss
from lvprune.core.pruning_state import PruningState
from lvprune.core.stages import check_stages
from lvprune.core.stats import PruningStats


class Pruning:
    """A stage pruner (`pruner`) and/or a cache press (`press`) on a loaded `model`.

    Args:
        model: a model of a supported family (`lvprune.families`), e.g. a `LlavaForConditionalGeneration`.
        pruner: a stage pruner built for this base (an `LVPrunerModel`, a `FastVPruner`, ...), or None.
        keep_ratios: stage ratios to apply instead of the pruner's own (an LVPruning pruner needs no retraining).
        press: a cache press (a `PLPHPPress`, a `KVPressScorer`, ...), or None.
        plphp: the keyword of lvprune 0.1 for `press` (deprecated).
    """

    def __init__(self, model: nn.Module, pruner: nn.Module | None = None, *, keep_ratios=None,
                 press: CachePress | None = None, plphp: CachePress | None = None):
        press = _one_press(press, plphp)
        if pruner is not None:
            pruner.config.check_base(model.config)
            keep_ratios = list(keep_ratios) if keep_ratios is not None else pruner.config.keep_ratios
            check_stages(pruner.config.after_layers, keep_ratios, pruner.config.num_hidden_layers)
            pruner.eval()
        elif keep_ratios is not None:
            raise ValueError("keep_ratios needs a pruner: they are the ratios of its stages.")
        if press is not None and not isinstance(press, CachePress):
            raise TypeError(f"press must be a CachePress (e.g. lvprune.PLPHPPress()) or None, got "
                            f"{type(press).__name__}.")
        self.model, self.pruner, self.keep_ratios, self.press = model, pruner, keep_ratios, press
        self.num_layers = len(decoder_layers(model))
        if self.press is not None and self.press.start_layer >= self.num_layers:
            raise ValueError(f"{type(self.press).__name__} start_layer={self.press.start_layer} is at or beyond the "
                             f"model's depth ({self.num_layers} layers, 0-based): it would prune nothing.")
        self.cache_kwarg = cache_kwarg(model)
        layer_inputs = self.press is not None and self.press.reads_layer_input
        self.hooks = LayerHooks(model, pruner, layer_inputs=layer_inputs, keep_ratios=keep_ratios)
        self.handles = []

    def attach(self) -> "Pruning":
        """Start pruning every `forward` / `generate` of the model."""
        if getattr(self.model, "lvprune", None) is not None:
            raise RuntimeError("this model is already pruned; call lvprune.unprune(model) first.")
        self.hooks.attach()
        self.handles.append(self.model.register_forward_pre_hook(self._before_call, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._after_call, with_kwargs=True))
        # generate() settings a pruned cache cannot honour are refused before generation starts.
        self.model.generate = CheckedGenerate(self.model, getattr(self.hooks.pruner, "read_call", None))
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
        labels = kwargs.pop("labels", None)  # scored here, over the kept rows (lvprune.core.pruned_loss)
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
        # Handed back under the name this transformers release reads (lvprune.core.contract).
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
        "prompt tokens (a chat, a prefix cache), press with queries='expected' (PLPHPPress's default).", UserWarning,
        stacklevel=3)


def _device(module: nn.Module) -> torch.device | None:
    """Where `module`'s first parameter or buffer lives (None for a module without tensors)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if tensor is None else tensor.device


def _one_press(press, plphp):
    """`press`, or the deprecated `plphp=` keyword's value (never both: a cache is pressed once)."""
    if plphp is None:
        return press
    warnings.warn("the plphp= keyword is deprecated: pass the press as press= (lvprune.PLPHPPress(...) or any "
                  "other cache press); plphp= goes in lvprune 0.3.", FutureWarning, stacklevel=3)
    if press is not None:
        raise ValueError("pass one cache press, as press=: a cache is pressed once (plphp= is press='s old name).")
    return plphp


def pruning(model: nn.Module, pruner: nn.Module | None = None, *, keep_ratios=None,
            press: CachePress | None = None, plphp: CachePress | None = None) -> Pruning:
    """Context manager: `with pruning(model, pruner, press=PLPHPPress()): model.generate(...)`."""
    return Pruning(model, pruner, keep_ratios=keep_ratios, press=_one_press(press, plphp))


def unprune(model: nn.Module) -> nn.Module:
    """Undo `load_pruned_model` / `Pruning.attach`: the same object, back to the stock model."""
    handle = getattr(model, "lvprune", None)
    if handle is None:
        raise ValueError("this model is not pruned by lvprune.")
    return handle.detach()
