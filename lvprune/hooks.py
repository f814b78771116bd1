"""Attaching lvprune to a stock LLaVA without editing its code.

`LayerHooks` selects lvprune's registered attention function for the language model and puts forward hooks
on its decoder layers: before each layer the hook hands it the rotary tables of the rows still present; after
a stage layer it runs the decision module. Every hook reads the call's `PruningState` from the forward's
keyword arguments (`lvprune_state`); without one, they do nothing. `detach()` restores the stock model.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from . import attention

STATE_KWARG = "lvprune_state"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers of a `LlavaForConditionalGeneration` (or its `LlavaModel`)."""
    inner = getattr(model, "model", model)
    language_model = getattr(inner, "language_model", None)
    if language_model is None or not hasattr(language_model, "layers"):
        raise TypeError(f"{type(model).__name__} is not a LLaVA-style model with `model.language_model.layers`.")
    return language_model.layers


def text_attention(model: nn.Module) -> str:
    """The attention implementation the language model runs with (`sdpa`, `eager`, ...)."""
    return model.config.get_text_config()._attn_implementation


def _enter_layer(layer_idx, module, args, kwargs):
    state = kwargs.get(STATE_KWARG)
    if state is not None:
        kwargs["position_embeddings"] = state.enter_layer(layer_idx, kwargs.get("position_embeddings"))
    return args, kwargs


def _leave_stage(stage, module, args, kwargs, output):
    state = kwargs.get(STATE_KWARG)
    if state is None or not state.prefill or state.pruner is None:
        return output
    return state.run_stage(stage, output)


class LayerHooks:
    """Hooks and attention implementation of lvprune on `model`; `pruner` gives the stage layers (may be None)."""

    def __init__(self, model: nn.Module, pruner=None):
        self.model, self.pruner = model, pruner
        self.base_attention = text_attention(model)
        self.handles = []

    def attach(self) -> "LayerHooks":
        attention.register()
        if self.base_attention == attention.NAME:
            raise RuntimeError("lvprune is already attached to this model; detach it first.")
        self.model.set_attn_implementation({"text_config": attention.NAME})
        for i, layer in enumerate(decoder_layers(self.model)):
            self.handles.append(layer.register_forward_pre_hook(partial(_enter_layer, i), with_kwargs=True))
            stage = self.pruner.stage_for_layer(i) if self.pruner is not None else None
            if stage is not None:
                self.handles.append(layer.register_forward_hook(partial(_leave_stage, stage), with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.model.set_attn_implementation({"text_config": self.base_attention})
