"""Attaching lvprune to a stock model of a supported family (`lvprune.families`) without editing its code.

`LayerHooks` selects lvprune's registered attention function for the language model and puts forward hooks
on its decoder layers: before each layer the hook hands it the rotary tables of the rows still present; after
a stage layer it runs the stage pruner (before the first layer, for a stage after layer 0); before each
attention module, with `layer_inputs` (for a press that reads the layer's input, `CachePress.reads_layer_input`),
it keeps that input for the press. A pruner that reads or rewrites the vision tower's features (VisionZip) puts
its own hooks there (`attach_to(model, keep_ratios)`, removed with the others). Every hook
reads the call's `PruningState` from the forward's keyword arguments (`lvprune_state`); without one, they do
nothing. `detach()` restores the stock model.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from lvprune.core import attention
from lvprune.core.contract import (
    POSITION_EMBEDDINGS_KWARG,
    attention_module,
    decoder_layers,
    final_norm,
    rotary_embedding,
    set_text_attention,
    text_attention,
    unsupported_attention,
)
from lvprune.core.protocols import LayerInput
from lvprune.core.stages import stage_for_layer
from lvprune.families import backbone_for

STATE_KWARG = "lvprune_state"


def _enter_layer(layer_idx, module, args, kwargs):
    state = kwargs.get(STATE_KWARG)
    if state is not None:
        rotary = state.enter_layer(layer_idx, kwargs.get(POSITION_EMBEDDINGS_KWARG))
        kwargs[POSITION_EMBEDDINGS_KWARG] = rotary
    return args, kwargs


def _enter_attention(rotary, module, args, kwargs):
    state = kwargs.get(STATE_KWARG)
    if state is not None and state.prefill and state.press is not None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        state.layer_input = LayerInput(hidden, kwargs, rotary)
    return args, kwargs


def _leave_stage(stage, next_layer, final_norm, module, args, kwargs, output):
    state = kwargs.get(STATE_KWARG)
    if state is None or not state.prefill or state.pruner is None:
        return output
    return state.run_stage(stage, output, next_layer, final_norm)


def _before_first_layer(stage, module, args, kwargs):
    """A stage after layer 0: prune the merged input embeddings before the first decoder layer runs (this hook
    is registered before `_enter_layer`, which then hands the layer the kept rows' rotary tables)."""
    state = kwargs.get(STATE_KWARG)
    if state is None or not state.prefill or state.pruner is None:
        return args, kwargs
    if state.position_embeddings is None:
        state.position_embeddings = kwargs.get(POSITION_EMBEDDINGS_KWARG)
    if args:
        return (state.run_stage(stage, args[0], module), *args[1:]), kwargs
    kwargs["hidden_states"] = state.run_stage(stage, kwargs["hidden_states"], module)
    return args, kwargs


class LayerHooks:
    """Hooks and attention implementation of lvprune on `model`; `pruner` gives the stage layers (may be None);
    `layer_inputs`: keep each attention module's input for the press (`PruningState.layer_input`); `keep_ratios`:
    the stages' ratios the calls apply (default: the pruner's own)."""

    def __init__(self, model: nn.Module, pruner=None, layer_inputs: bool = False, keep_ratios=None):
        backbone = backbone_for(model.config)  # refuses a family lvprune does not reproduce
        reason = unsupported_attention(model)
        if reason is not None:
            raise ValueError(f"lvprune cannot prune {type(model).__name__}: {reason}, and lvprune's attention "
                             "reproduces causal full attention only.")
        self.vision_ids = backbone.vision_token_ids(model.config)
        self.model, self.pruner, self.layer_inputs = model, pruner, layer_inputs
        self.keep_ratios = keep_ratios if keep_ratios is not None or pruner is None else pruner.config.keep_ratios
        self.base_attention = text_attention(model)
        self.handles = []

    def attach(self) -> "LayerHooks":
        attention.register()
        if self.base_attention == attention.NAME:
            raise RuntimeError("lvprune is already attached to this model; detach it first.")
        if hasattr(self.pruner, "attach_to"):  # hooks of its own, before the language model (may refuse)
            self.handles += self.pruner.attach_to(self.model, self.keep_ratios)
        set_text_attention(self.model, attention.NAME)
        rotary = rotary_embedding(self.model) if self.layer_inputs else None
        layers = decoder_layers(self.model)
        after = self.pruner.config.after_layers if self.pruner is not None else ()
        for i, layer in enumerate(layers):
            if i == 0 and 0 in after:  # a stage before the language model's first layer
                self.handles.append(layer.register_forward_pre_hook(partial(_before_first_layer, after.index(0)),
                                                                    with_kwargs=True))
            self.handles.append(layer.register_forward_pre_hook(partial(_enter_layer, i), with_kwargs=True))
            if self.layer_inputs:
                self.handles.append(attention_module(layer).register_forward_pre_hook(
                    partial(_enter_attention, rotary), with_kwargs=True))
            stage = stage_for_layer(after, i)
            if stage is not None:
                self.handles.append(layer.register_forward_hook(
                    partial(_leave_stage, stage, layers[i + 1], final_norm(self.model)), with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        set_text_attention(self.model, self.base_attention)
