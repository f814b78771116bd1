"""The public imports and keywords of lvprune 0.1 still work for one release, each with a FutureWarning naming its
new home, and give the very objects of the new layout."""

import subprocess
import sys
from pathlib import Path

import pytest

import lvprune
from lvprune import deprecated
from lvprune.methods.plphp import PLPHPPress

ROOT = Path(__file__).resolve().parents[1]


def import_old(statement: str) -> dict:
    """Run `statement` (an old import) afresh, returning its names; it must warn with FutureWarning."""
    for name in [n for n in sys.modules if deprecated.targets(n) is not None]:
        del sys.modules[name]
    namespace = {}
    with pytest.warns(FutureWarning, match="old"):
        exec(statement, namespace)
    return namespace


@pytest.mark.parametrize("statement, new", [
    ("from lvprune.plphp import PLPHPConfig", ("lvprune.methods.plphp", "PLPHPPress")),
    ("from lvprune.inference import load_pruned_model", ("lvprune.serving", "load_pruned_model")),
    ("from lvprune.inference import Pruning", ("lvprune.core.pruning", "Pruning")),
    ("from lvprune.baselines import RandomPruner", ("lvprune.methods.random_pruning", "RandomPruner")),
    ("from lvprune.baselines import FastVPruner", ("lvprune.methods.fastv", "FastVPruner")),
    ("from lvprune.stage import StagePruner", ("lvprune.core.protocols", "StagePruner")),
    ("from lvprune.press import CachePress", ("lvprune.core.protocols", "CachePress")),
    ("from lvprune.config import check_stages", ("lvprune.core.stages", "check_stages")),
    ("from lvprune.modeling import LVPrunerModel", ("lvprune.methods.lvpruning.modules", "LVPrunerModel")),
    ("from lvprune.calibration import suggest_thresholds", ("lvprune.methods.plphp", "suggest_thresholds")),
    ("from lvprune.backbones import backbone_for", ("lvprune.families", "backbone_for")),
    ("from lvprune.backbones.llava import CHAT_TEMPLATE", ("lvprune.families.llava", "CHAT_TEMPLATE")),
    ("from lvprune.train import TrainConfig", ("lvprune.training", "TrainConfig")),
    ("from lvprune.testing import tiny_llava", ("lvprune.families.tiny", "tiny_llava")),
    ("from lvprune.settings import parse", ("lvprune.utils.command_line", "parse")),
])
def test_an_old_import_warns_and_gives_the_new_object(statement, new):
    import importlib

    name = statement.split(" import ")[1]
    assert import_old(statement)[name] is getattr(importlib.import_module(new[0]), new[1])


def test_old_names_of_the_package_and_of_the_training_module():
    with pytest.warns(FutureWarning, match="PLPHPConfig is now PLPHPPress"):
        assert lvprune.PLPHPConfig is PLPHPPress
    with pytest.warns(FutureWarning, match="lvprune.methods.lvpruning.LVPruningForTraining"):
        from lvprune.training import LVPruningForTraining
    assert LVPruningForTraining is lvprune.LVPruningForTraining
    with pytest.raises(AttributeError):
        lvprune.NoSuchName  # noqa: B018


def test_the_plphp_keyword_is_press(base):
    with pytest.warns(FutureWarning, match="plphp= keyword is deprecated"):
        handle = lvprune.Pruning(base, plphp=PLPHPPress(start_layer=1))
    assert handle.press == PLPHPPress(start_layer=1)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="pass one cache press"):
        lvprune.Pruning(base, plphp=PLPHPPress(), press=PLPHPPress())


def test_layer_stats_fields_moved_to_the_press_extras(base, mixed_batch):
    import torch

    with lvprune.pruning(base, press=PLPHPPress(start_layer=1)), torch.no_grad():
        base(**mixed_batch)
        layer = base.pruning_stats.layers[1]
    assert set(layer.extras) == {"plphp_class", "plphp_rate", "vision_attention"}
    with pytest.warns(FutureWarning, match=r"layer.extras.get\('plphp_class'\)"):
        assert layer.plphp_class == layer.extras["plphp_class"]
    assert base.pruning_stats.layers[0].extras == {}  # a layer before start_layer: nothing pressed


def test_the_old_training_module_runs_as_a_command():
    """`accelerate launch -m lvprune.train` of lvprune 0.1 runs the trainer, saying its new name."""
    out = subprocess.run([sys.executable, "-m", "lvprune.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--base_model" in out.stdout and "is now lvprune.training" in out.stderr

