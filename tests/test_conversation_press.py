"""A chat served from a cache pressed with `PLPHPPress()`'s defaults: each later question's answer, decoded from
the cache pressed in the first turn's prefill, stays near the unpruned model at the defaults and above a random
choice of the same slots at a budget tight enough to tell rankings apart, where the paper's ranking
(`queries="last"`), one named option away, falls below random. On the reference base (one image, a second
question) and on the second base (1-4 images, 3-turn conversations), where modelling the queries to come from
every prompt row (`query_rows="all"`, kvpress's statistics: mostly vision rows) falls below random too. Images
pressed before their question rank above random choice with the queries to come gathered beforehand
(`query_statistics`), below it with the prefix's own fit."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from conftest import world2_conversations

import lvprune
from lvprune import PLPHPPress, families
from lvprune.bench.harness import load_base
from lvprune.bench.methods import RandomSlots
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


def test_a_second_turn_at_the_defaults_stays_near_the_unpruned_model(second_turns):
    """At the defaults (86% of the cache) the unpruned model answers 96% of these."""
    default = PLPHPPress()
    assert default.queries == "expected" and default.query_rows == "text"
    assert accuracy(second_turns, default)[0] >= 90


def test_a_second_turn_at_a_tight_budget_beats_random_choice_and_the_paper_ranking(second_turns):
    """17% of the cache, where the ranking matters: random choice and the paper's ranking collapse."""
    default = dataclasses.replace(PLPHPPress(), r=0.1, delta_r=0.06, start_layer=0)
    ours, kv = accuracy(second_turns, default)
    random, random_kv = accuracy(second_turns, RandomSlots(**default.to_dict()))
    assert kv == pytest.approx(random_kv)  # the same slots held: the same layer classes and counts
    paper, _ = accuracy(second_turns, dataclasses.replace(default, queries="last"))
    assert paper < random < ours and ours >= 85, (paper, random, ours)


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    """The shipped second base and 40 fresh 3-turn conversations of world 2 (world2_bench's, tasks balanced),
    with each first prompt's (text, vision) slot counts."""
    from lvprune_shapes.reference.world2 import SHIPPED_DIR as WORLD2_BASE
    from lvprune_shapes.world2_bench import first_prompts

    model, processor = load_base(WORLD2_BASE)
    conversations = world2_conversations(tmp_path_factory.mktemp("w2"), 40)
    counts = cache_sweep.world2_counts(model, first_prompts(conversations, processor, model), "conversation")
    return model, processor, conversations, counts


def test_later_turns_on_the_second_base_beat_random_choice_by_the_text_rows_queries(conversations):
    """A quarter of the vision slots from layer 0: the default above random choice of the same slots, kvpress's
    statistics over every row (most of them vision rows) below it (150 conversations: 70.9, 59.2, 25.4)."""
    model, processor, items, counts = conversations
    default = PLPHPPress(r=0.25, delta_r=0.0, start_layer=0)

    def score(press):
        torch.manual_seed(0)
        return cache_sweep.measure_world2(model, processor, items, counts, "conversation",
                                          lambda text, vision: dict(press=press))

    (ours, kv), (random, random_kv) = score(default), score(RandomSlots(**default.to_dict()))
    every_row, _ = score(dataclasses.replace(default, query_rows="all"))
    assert kv == pytest.approx(random_kv)
    assert every_row < random < ours, (every_row, random, ours)


def test_an_image_prefix_pressed_with_gathered_queries_beats_random_choice(conversations, tmp_path):
    """Images pressed before any question (kvpress's question-agnostic protocol), a tenth of the vision slots
    from layer 0: with the queries to come gathered on 64 other conversations' first prompts the press ranks
    above random choice of the same slots; fitted to the prefix's own rows (the newlines between images) it ranks
    below (here 50.9, 31.4, 15.5; at a quarter of the slots over 150 conversations 68.9, 59.3, 30.8)."""
    from lvprune_shapes.world2_bench import first_prompts

    model, processor, items, _ = conversations
    counts = cache_sweep.world2_counts(model, first_prompts(items, processor, model), "context")
    calibration = world2_conversations(tmp_path, 64, seed=8)
    statistics = lvprune.query_statistics(model, first_prompts(calibration, processor, model))
    prefix_fit = PLPHPPress(r=0.1, delta_r=0.0, start_layer=0)

    def score(press):
        torch.manual_seed(0)
        return cache_sweep.measure_world2(model, processor, items, counts, "context",
                                          lambda text, vision: dict(press=press))[0]

    gathered = score(dataclasses.replace(prefix_fit, statistics=statistics))
    random, own = score(RandomSlots(**prefix_fit.to_dict())), score(prefix_fit)
    assert own < random < gathered, (own, random, gathered)
