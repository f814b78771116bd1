"""A chat served from a cache pressed with `PLPHPPress()`'s defaults, on the shipped reference base: the second
question's answer, decoded from the cache pressed in the first turn's prefill, is never below a random choice
of the same slots (at the defaults, and at a budget tight enough to tell rankings apart), where the paper's
ranking (`queries="last"`), one named option away, falls below random there."""

import dataclasses
import sys
from pathlib import Path

import pytest

from lvprune import PLPHPPress, families
from lvprune.bench.harness import load_base
from lvprune_shapes.reference.cache import SHIPPED_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cache_sweep  # noqa: E402

RECORDS = 40


@pytest.fixture(scope="module")
def second_turns(tmp_path_factory):
    """The reference base and its prepared second-turn items (`cache_sweep.measure`'s), fresh two-question
    records of the test split's seed."""
    model, processor = load_base(SHIPPED_DIR)
    config = cache_sweep.SweepConfig(base=str(SHIPPED_DIR), test_records=RECORDS,
                                     cache_dir=str(tmp_path_factory.mktemp("conversation")))
    records, folder = cache_sweep.two_turn_split(config)
    backbone, image = families.backbone_for(model.config), model.config.image_token_id
    items = []
    for record in records:
        prefix, ids, pixels, expected = cache_sweep.case_inputs(record, folder, "second turn", processor, backbone,
                                                                image)
        vision = int((ids[0, :prefix] == image).sum())
        items.append((prefix, ids, pixels, expected, prefix - vision, vision))
    return model, processor, items


def accuracy(second_turns, press):
    model, processor, items = second_turns
    return cache_sweep.measure(model, processor, items, lambda text, vision: dict(press=press))


@pytest.mark.parametrize("default", [PLPHPPress(), dataclasses.replace(PLPHPPress(), r=0.1, delta_r=0.06,
                                                                       start_layer=0)],
                         ids=["defaults", "tight budget"])
def test_a_second_turn_from_the_default_press_is_never_below_random_choice(second_turns, default):
    assert default.queries == "expected"
    ours, kv = accuracy(second_turns, default)
    random, random_kv = accuracy(second_turns, cache_sweep.RandomSlots(**default.to_dict()))
    assert kv == pytest.approx(random_kv)  # the same slots held: the same layer classes and counts
    assert ours >= random and ours >= 90, (ours, random)
    if default.r < PLPHPPress().r:  # a budget where the ranking matters: the paper's collapses below random
        paper, _ = accuracy(second_turns, dataclasses.replace(default, queries="last"))
        assert paper < random < ours, (paper, random, ours)
