"""DeepSpeed specifics: settings accelerate leaves to the config file, and ZeRO-3's sharded parameters
(they must be gathered wherever they are read whole)."""

from __future__ import annotations

import contextlib


def gathered(params, enabled: bool):
    """Context in which `params` are whole on every process (`enabled`: they are ZeRO-3 sharded)."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def is_zero3(accelerator) -> bool:
    """Whether `accelerator` runs DeepSpeed ZeRO stage 3."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def configure_deepspeed(accelerator, config) -> None:
    """Give DeepSpeed the clipping norm of `config` (it clips inside its own step; 0 turns clipping off).

    Call before `accelerator.prepare`. Micro-batch size, accumulation and bf16 are filled by accelerate from the
    training loop's own settings (`"auto"` in `configs/deepspeed/*.json`).
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm
