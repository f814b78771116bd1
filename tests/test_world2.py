"""The second reference world's data: every answer re-derived from the scenes, balanced, loadable, deterministic."""

import json
import re
from collections import Counter

import pytest

from lvprune.bench.metrics import item_f1
from lvprune.data import load_llava_dataset
from lvprune_shapes.processor import build_processor
from lvprune_shapes.world2 import TASKS, World2Config, answer_options, generate_split, make_world2_dataset, vocabulary

ORDINAL = ["first", "second", "third", "fourth"]
NUMBER = ["zero", "one", "two", "three", "four", "five"]


def answer_from_scenes(question: str, scenes: list[list[dict]]) -> str:
    """The answer to `question`, read off the scenes by this test's own parsing of each template."""
    colour_of = lambda m: m.group(1)  # noqa: E731
    if question == "List every object.":
        cells = ["northwest", "north", "northeast", "west", "centre", "east", "southwest", "south", "southeast"]
        return ", ".join(f"{o['colour']} in the {o['position']}"
                         for o in sorted(scenes[0], key=lambda o: cells.index(o["position"])))
    if m := re.fullmatch(r"Which image has a (\w+) object\?", question):
        having = [i for i, s in enumerate(scenes) if any(o["colour"] == colour_of(m) for o in s)]
        assert len(having) == 1, question
        return f"the {ORDINAL[having[0]]}"
    if m := re.fullmatch(r"How many images have a (\w+) object\?", question):
        return NUMBER[sum(any(o["colour"] == colour_of(m) for o in s) for s in scenes)]
    if m := re.fullmatch(r"Which image has more (\w+) objects\?", question):
        a, b = (sum(o["colour"] == colour_of(m) for o in s) for s in scenes)
        assert a != b, question
        return "the first" if a > b else "the second"
    (scene,) = scenes
    if m := re.fullmatch(r"What colour is the object in the (\w+)\?", question):
        (colour,) = [o["colour"] for o in scene if o["position"] == m.group(1)]
        return colour
    if m := re.fullmatch(r"Where is the (\w+) object\?", question):
        (position,) = [o["position"] for o in scene if o["colour"] == m.group(1)]
        return f"in the {position}"
    if m := re.fullmatch(r"Is there a (\w+) object\?", question):
        return "yes" if any(o["colour"] == m.group(1) for o in scene) else "no"
    m = re.fullmatch(r"How many (\w+) objects are there\?", question)
    return NUMBER[sum(o["colour"] == m.group(1) for o in scene)]


@pytest.fixture(scope="module")
def conversations():
    return [record for record, _ in generate_split("test", 150, World2Config(turns=3))]


def test_every_answer_is_the_scenes_answer(conversations):
    for record in conversations:
        assert [t["answer"] for t in record["qa"]] == [answer_from_scenes(t["question"], record["scenes"])
                                                       for t in record["qa"]], record["id"]


def test_a_record_shows_its_images_and_asks_new_questions(conversations):
    for record in conversations:
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        n = len(record["scenes"])
        assert len(images) == n and (n == 1) == (record["task"] in ("single", "list"))
        assert 2 <= n <= 4 if n > 1 else True
        human = [t["value"] for t in record["conversations"] if t["from"] == "human"]
        assert human[0].count("<image>") == n and not any("<image>" in h for h in human[1:])
        assert len({t["question"] for t in record["qa"]}) == 3
        for scene in record["scenes"]:
            assert len({o["position"] for o in scene}) == len(scene)  # one object per cell


def test_turns_at_most_asks_every_new_question_it_finds_up_to_the_ceiling():
    exact, ceiling = World2Config(turns=12), World2Config(turns=12, turns_at_most=True)
    with pytest.raises(LookupError, match="no new question"):  # two images hold about a dozen questions
        [record for record, _ in generate_split("train", 60, exact)]
    records = [record for record, _ in generate_split("train", 60, ceiling)]
    turns = Counter(len(r["qa"]) for r in records)
    assert max(turns) == 12 and min(turns) < 12, turns  # single images reach the ceiling, pairs stop short
    assert all(len(r["qa"]) == 12 for r in records if len(r["scenes"]) == 1)
    for record in records:
        assert len({t["question"] for t in record["qa"]}) == len(record["qa"])
        assert [t["answer"] for t in record["qa"]] == [answer_from_scenes(t["question"], record["scenes"])
                                                       for t in record["qa"]], record["id"]
    plan = [r["task"] for r, _ in generate_split("train", 60, World2Config(turns=1))]
    assert [r["task"] for r in records] == plan  # the tasks are planned before any scene is drawn


def test_first_turns_are_balanced_within_each_task():
    config = World2Config()
    records = [record for record, _ in generate_split("train", 300, config)]
    tasks = Counter(r["task"] for r in records)
    assert set(tasks) == set(TASKS) and max(tasks.values()) - min(tasks.values()) <= 1
    for task in ("which", "images", "compare"):
        answers = Counter(r["answer"] for r in records if r["task"] == task)
        assert set(answers) == set(answer_options(task, config))
        assert max(answers.values()) - min(answers.values()) <= 1, (task, answers)
    lengths = Counter(len(r["scenes"][0]) for r in records if r["task"] == "list")
    assert set(lengths) == {3, 4, 5} and max(lengths.values()) - min(lengths.values()) <= 1


def test_the_loader_reads_every_record_and_files_are_byte_identical(tmp_path):
    config = World2Config(turns=2)
    first = make_world2_dataset(tmp_path / "a", {"test": 12}, config)
    second = make_world2_dataset(tmp_path / "b", {"test": 12}, config)
    assert first["test"].read_bytes() == second["test"].read_bytes()
    records = json.loads(first["test"].read_text())
    for record in records:
        for name in record["image"] if isinstance(record["image"], list) else [record["image"]]:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    processor = build_processor(image_size=96, patch_size=12, words=tuple(vocabulary()))
    dataset, stats = load_llava_dataset(first["test"], tmp_path / "a", processor)
    assert stats.kept == len(records) == 12
    unknown = processor.tokenizer.unk_token_id
    for example, record in zip(dataset, records):
        assert unknown not in example["input_ids"]
        assert len(example["pixel_values"]) == len(record["scenes"])


def test_item_f1_is_twice_the_matches_over_the_items():
    predictions = ["red in the north, blue in the centre", "green in the east", ""]
    answers = ["red in the north, blue in the west", "green in the east, red in the south", "red in the west"]
    assert item_f1(predictions, answers) == pytest.approx(2 * 2 / (3 + 5))
    assert item_f1(["a, b"], ["b, a"]) == 1.0
    assert item_f1(["x"], ["y"]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        item_f1(["a", "b"], ["a"])


def test_the_command_writes_world_2(tmp_path, capsys):
    from lvprune_shapes.make_shapes import main

    main(["--world", "2", "--turns", "2", "--out", str(tmp_path / "cli"), "--train", "0", "--validation", "0",
          "--test", "5"])
    assert "test: 5 records" in capsys.readouterr().out
    direct = make_world2_dataset(tmp_path / "direct", {"test": 5}, World2Config(turns=2))
    assert (tmp_path / "cli" / "test.json").read_bytes() == direct["test"].read_bytes()
    with pytest.raises(SystemExit, match="--world must be 1 or 2, got 3"):
        main(["--world", "3", "--out", str(tmp_path / "x")])
