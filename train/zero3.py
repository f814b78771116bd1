"""DeepSpeed ZeRO-3 compatibility: parameters it shards must be gathered where they are read whole."""

from __future__ import annotations

import contextlib


def gathered(params, enabled: bool):
    """Context in which `params` are whole on every process (`enabled`: they are ZeRO-3 sharded)."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def register_pruner_as_external(model) -> None:
    """Declare the pruner's parameters external parameters of the training wrapper `model`.

    ZeRO-3 gathers a parameter only inside its own module's forward, but `LVPruningForTraining` also reads every
    pruner parameter after the base's forward (a zero-valued term that keeps them all in the graph for data
    parallelism), so they must stay whole during the wrapper's entire forward.
    """
    import deepspeed

    for param in model.pruner.parameters():
        deepspeed.zero.register_external_parameter(model, param)
