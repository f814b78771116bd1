"""`accelerate launch -m lvprune.train --KEY VALUE ...` (or `python -m lvprune.train`): see `TrainConfig`."""

from .loop import main

main(prog="python -m lvprune.train")
