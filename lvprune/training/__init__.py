"""Training LVPruning pruners: `train(TrainConfig(...))` in-process, or from the command line

    accelerate launch -m lvprune.training --base_model llava-hf/llava-1.5-7b-hf --data_path train.json ...
"""

from lvprune.training.config import TrainConfig, parse_config
from lvprune.training.loop import STOPS, main, train

__all__ = ["STOPS", "TrainConfig", "main", "parse_config", "train"]


def __getattr__(name: str):
    # `lvprune.training` was LVPruning's training forward in lvprune 0.1; it is the trainer now.
    if name in ("LVPruningForTraining", "LVPruningOutput"):
        import warnings

        from lvprune.methods.lvpruning import training_forward

        warnings.warn(f"lvprune.training.{name} is now lvprune.methods.lvpruning.{name} (or lvprune.{name}); the "
                      "old path goes in lvprune 0.3.", FutureWarning, stacklevel=2)
        return getattr(training_forward, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
