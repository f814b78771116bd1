"""`accelerate launch -m lvprune.training --KEY VALUE ...` (or `python -m lvprune.training`): see `TrainConfig`."""

from lvprune.training.loop import main

main(prog="python -m lvprune.training")
