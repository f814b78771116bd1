"""The synthetic shapes VQA generator: format, determinism, balance, answers that need the image."""

import json
from collections import Counter, defaultdict

import pytest

from lvprune_shapes.dataset import (
    COLOURS,
    NUMBERS,
    POSITIONS,
    QUESTION_TYPES,
    ShapesConfig,
    answer_options,
    generate_split,
    make_shapes_dataset,
    vocabulary,
)

N_TRAIN, N_TEST = 2000, 600


@pytest.fixture(scope="module")
def train():
    return [record for record, _ in generate_split("train", N_TRAIN, ShapesConfig(seed=3))]


@pytest.fixture(scope="module")
def test_split():
    return [record for record, _ in generate_split("test", N_TEST, ShapesConfig(seed=3))]


def answer_from_objects(question: str, objects: list[dict]) -> str:
    """Answer a generated question from the scene, by hand (independent of the generator's code)."""
    words = question.rstrip("?").split()
    colours = [o["colour"] for o in objects]
    if question.startswith("What colour is the object in the"):
        (match,) = [o for o in objects if o["position"] == words[-1]]
        return match["colour"]
    if question.startswith("Where is the"):
        (match,) = [o for o in objects if o["colour"] == words[3]]
        return "in the " + match["position"]
    if question.startswith("Is there a"):
        return "yes" if words[3] in colours else "no"
    assert question.startswith("How many") and words[3] == "objects"
    return NUMBERS[colours.count(words[2])]


def test_record_format_is_llava(train):
    record = train[0]
    assert set(record) == {"id", "image", "conversations", "type", "answer", "qa", "objects"}
    assert record["image"] == f"images/train/{record['id']}.png"
    human, gpt = record["conversations"]
    assert human["from"] == "human" and human["value"] == "<image>\n" + record["qa"][0]["question"]
    assert gpt == {"from": "gpt", "value": record["answer"]}


def test_answers_match_the_scene(train):
    for record in train:
        question = record["qa"][0]["question"]
        assert answer_from_objects(question, record["objects"]) == record["answer"], record["id"]
        assert record["answer"] in answer_options(record["type"], ShapesConfig())


def test_objects_sit_in_their_own_grid_cell(train):
    for record in train[:300]:
        assert len({o["position"] for o in record["objects"]}) == len(record["objects"])
        counts = Counter(o["colour"] for o in record["objects"])
        if record["type"] in ("colour", "position"):  # the asked-about object's colour is its own
            named = record["answer"] if record["type"] == "colour" else record["qa"][0]["question"].split()[3]
            assert counts[named] == 1
        assert 3 <= len(record["objects"]) <= 5
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            row, col = divmod(POSITIONS.index(obj["position"]), 3)
            assert col * 32 <= x0 < x1 <= (col + 1) * 32 and row * 32 <= y0 < y1 <= (row + 1) * 32


def test_types_and_answers_are_balanced(train):
    types = Counter(r["type"] for r in train)
    assert set(types) == set(QUESTION_TYPES) and max(types.values()) - min(types.values()) <= 1
    for qtype in QUESTION_TYPES:
        counts = Counter(r["answer"] for r in train if r["type"] == qtype)
        assert set(counts) == set(answer_options(qtype, ShapesConfig()))
        assert max(counts.values()) - min(counts.values()) <= 1, (qtype, counts)


def test_question_alone_does_not_predict_the_answer(train, test_split):
    """A question-only model (majority answer per question text, fitted on train) is near chance."""
    by_question = defaultdict(Counter)
    for r in train:
        by_question[r["qa"][0]["question"]][r["answer"]] += 1
    hits = [by_question[r["qa"][0]["question"]].most_common(1)[0][0] == r["answer"] for r in test_split]
    chance = sum(1 / len(answer_options(r["type"], ShapesConfig())) for r in test_split) / len(test_split)
    assert sum(hits) / len(hits) < chance + 0.08


def test_pixels_show_the_objects():
    for record, image in generate_split("pixels", 40, ShapesConfig(seed=1)):
        assert image.size == (96, 96) and image.getpixel((0, 0)) == (235, 235, 235)
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            centre = ((x0 + x1) // 2, (y0 + y1 * 3) // 4)  # low centre: inside triangles too
            assert image.getpixel(centre) == COLOURS[obj["colour"]]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    sizes = {"train": 40, "test": 10}
    make_shapes_dataset(tmp_path / "a", sizes, ShapesConfig(seed=7))
    make_shapes_dataset(tmp_path / "b", sizes, ShapesConfig(seed=7))
    make_shapes_dataset(tmp_path / "c", sizes, ShapesConfig(seed=8))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 50 + 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def test_multi_turn_records(tmp_path):
    records = [r for r, _ in generate_split("train", 50, ShapesConfig(turns=3))]
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 3
        assert turns[0]["value"].startswith("<image>\n") and "<image>" not in turns[2]["value"]
        for qa, (human, gpt) in zip(record["qa"], zip(turns[::2], turns[1::2])):
            assert human["value"].removeprefix("<image>\n") == qa["question"] and gpt["value"] == qa["answer"]
            assert answer_from_objects(qa["question"], record["objects"]) == qa["answer"]


def test_vocabulary_covers_every_word(train):
    words = set(vocabulary())
    for record in train:
        for turn in record["conversations"]:
            assert set(turn["value"].replace("<image>", " ").replace("?", " ").split()) <= words


def test_cli_writes_the_splits(tmp_path):
    from lvprune_shapes.make_shapes import main

    main(["--out", str(tmp_path), "--train", "12", "--validation", "4", "--test", "0", "--image_size", "48"])
    assert not (tmp_path / "test.json").exists()
    train = json.loads((tmp_path / "train.json").read_text())
    assert len(train) == 12 and len(json.loads((tmp_path / "validation.json").read_text())) == 4
    assert all((tmp_path / r["image"]).is_file() for r in train)
    assert json.loads((tmp_path / "shapes_config.json").read_text())["config"]["image_size"] == 48


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 10}, "image_size"),
        ({"min_objects": 6, "max_objects": 5}, "min_objects"),
        ({"max_count": 6}, "max_count"),
        ({"turns": 0}, "turns"),
        ({"types": ("colour", "size")}, "types"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)
