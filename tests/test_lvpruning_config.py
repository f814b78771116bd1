"""LVPrunerConfig validation and sizing, LVPrunerModel checkpoints."""

import pytest
import torch
from safetensors.torch import load_file

from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPPress
from lvprune.families.tiny import tiny_llava_config
from lvprune.methods.lvpruning.config import scaled_after_layers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_ratios=[0.5, 0.6, 0.1]), "non-increasing"),
        (dict(keep_ratios=[0.0, 0.0, 0.0]), "outside (0, 1]"),
        (dict(keep_ratios=[1.5, 0.3, 0.1]), "outside (0, 1]"),
        (dict(after_layers=[1, 8, 8]), "strictly increasing"),
        (dict(after_layers=[-1, 8, 16]), "outside the model"),
        (dict(after_layers=[1, 8, 32]), "outside the model"),
        (dict(after_layers=[1, 8]), "one entry per stage"),
        (dict(hidden_size=100, num_heads=8), "must divide hidden_size"),
        (dict(ratio_loss="l1"), "ratio_loss"),
        (dict(rank_by="random"), "rank_by"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        LVPrunerConfig(**{"hidden_size": 4096, "num_hidden_layers": 32, **kwargs})


def test_from_base_config_scales_paper_layers():
    assert scaled_after_layers(32) == [1, 8, 16]
    assert scaled_after_layers(16) == [1, 4, 8]
    assert scaled_after_layers(4) == [1, 2, 3]
    config = LVPrunerConfig.from_base_config(tiny_llava_config(num_layers=8, hidden_size=64), num_heads=4)
    assert (config.hidden_size, config.num_hidden_layers, config.after_layers) == (64, 8, [1, 2, 4])
    assert LVPrunerConfig.from_base_config(tiny_llava_config(), after_layers=[2], keep_ratios=[0.5]).after_layers == [2]


def test_from_base_config_rejects_too_shallow_model():
    with pytest.raises(ValueError, match="cannot hold 3 stages"):
        LVPrunerConfig.from_base_config(tiny_llava_config(num_layers=3))


def test_checkpoint_round_trip_holds_only_the_pruner(tmp_path, pruner):
    pruner.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    weights = load_file(tmp_path / "model.safetensors")
    assert all(name.startswith("stages.") for name in weights)
    assert not any("language_model" in name or "vision_tower" in name for name in weights)
    loaded = LVPrunerModel.from_pretrained(tmp_path)
    strip = lambda config: {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    assert strip(loaded.config) == strip(pruner.config)
    for (name, a), (_, b) in zip(pruner.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_pruner_for_another_base_is_rejected(pruner):
    with pytest.raises(ValueError, match="hidden_size=64 does not match the base model's hidden_size=32"):
        pruner.config.check_base(tiny_llava_config(hidden_size=32, num_heads=4))
    with pytest.raises(ValueError, match="built for 4 decoder layers, the base model has 6"):
        pruner.config.check_base(tiny_llava_config(num_layers=6))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(r=1.5), "r=1.5"), (dict(delta_r=-0.1), "delta_r"), (dict(alpha=0.1, beta=0.2), "beta < alpha"),
     (dict(start_layer=-1), "start_layer")],
)
def test_plphp_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PLPHPPress(**kwargs)


def test_plphp_rates_follow_the_layer_class():
    config = PLPHPPress(r=0.4, delta_r=0.3, alpha=0.5, beta=0.2)
    cls, rate = config.rates(torch.tensor([0.6, 0.5, 0.3, 0.2, 0.1]))
    assert cls.tolist() == [2, 2, 1, 0, 0]
    assert torch.allclose(rate, torch.tensor([0.7, 0.7, 0.4, 0.1, 0.1]))
    _, clamped = PLPHPPress(r=0.9, delta_r=0.3).rates(torch.tensor([0.9]))
    assert clamped.item() == 1.0
