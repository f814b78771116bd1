"""Training LVPruning pruners: `train(TrainConfig(...))` in-process, or from the command line

    accelerate launch -m lvprune.train --base_model llava-hf/llava-1.5-7b-hf --data_path train.json ...
"""

from .config import TrainConfig, parse_config
from .loop import STOPS, main, train

__all__ = ["STOPS", "TrainConfig", "main", "parse_config", "train"]
