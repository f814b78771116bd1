"""The LLaVA-format loader on records in the real format, good and bad."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lvprune.data.llava_format import IGNORE_INDEX, encode_record, load_llava_dataset, prompt_length
from lvprune.data.records import NoRecords, normalize_record
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.processor import build_processor

RUN = "<image>" * 576


def turns(*values):
    """human, gpt, human, gpt ... from plain strings."""
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


GOOD = [
    {"id": 1, "image": "red.png", "conversations": turns("<image>\nWhat colour is the square?", "red")},
    {
        "id": "after",
        "image": "blue.png",
        "conversations": turns(
            "What colour is the circle?\n<image>", "blue", "How many circles are there?", "one",
            "Is there a red circle?", "no",
        ),
    },
    {
        "id": "two",
        "image": ["red.png", "blue.png"],
        "conversations": turns("<image>\nWhat colour is the square? <image>", "in the northwest"),
    },
    {"id": "wide", "image": "wide.png", "conversations": turns("Is there a green square?\n<image>", "yes")},
]
EXPECTED_PROMPTS = [
    "<s>USER: <image>\nWhat colour is the square? ASSISTANT: red</s>",
    "<s>USER: What colour is the circle?\n<image> ASSISTANT: blue</s>USER: How many circles are there? "
    "ASSISTANT: one</s>USER: Is there a red circle? ASSISTANT: no</s>",
    "<s>USER: <image>\nWhat colour is the square?\n<image> ASSISTANT: in the northwest</s>",
    "<s>USER: Is there a green square?\n<image> ASSISTANT: yes</s>",
]
EXPECTED_ANSWERS = [["red"], ["blue", "one", "no"], ["in the northwest"], ["yes"]]
TEXT_ONLY = {"id": "text", "conversations": turns("How many circles are there?", "two")}
BAD = [
    (TEXT_ONLY, "no_image"),
    ({"id": "missing", "image": "nope.png", "conversations": turns("<image>\nWhat?", "red")}, "missing_image_file"),
    ({"id": "untagged", "image": "red.png", "conversations": turns("What colour is the square?", "red")}, "no_image_tag"),
    ({"id": "twotags", "image": "red.png", "conversations": turns("<image> <image> What?", "red")}, "image_tag_mismatch"),
    ({"id": "tagged_answer", "image": "red.png", "conversations": turns("<image>\nWhat?", "<image>")}, "image_tag_mismatch"),
    ({"id": "empty", "image": "red.png", "conversations": []}, "empty_conversation"),
    ({"id": "gpt_first", "image": "red.png", "conversations": turns("<image>\nWhat?", "red")[::-1]}, "bad_roles"),
    ({"id": "two_humans", "image": "red.png", "conversations": turns("<image>\nWhat?", "red")[:1] * 2}, "bad_roles"),
    ({"id": "no_answer", "image": "red.png", "conversations": turns("<image>\nWhat?", "red", "Where?")}, "bad_roles"),
    ({"id": "broken", "image": "broken.png", "conversations": turns("<image>\nWhat?", "red")}, "unreadable_image"),
    ({"id": "int_image", "image": 5, "conversations": turns("<image>\nWhat?", "red")}, "malformed"),
    ({"id": "none_value", "image": "red.png", "conversations": [{"from": "human", "value": None}]}, "malformed"),
    ("not a record", "malformed"),
]


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images and one file of good and bad records interleaved (good ones keep their order)."""
    root = tmp_path_factory.mktemp("llava")
    Image.new("RGB", (96, 96), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (96, 96), (0, 0, 255)).save(root / "blue.png")
    Image.new("RGB", (192, 96), (0, 255, 0)).save(root / "wide.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    records = [r for pair in zip(GOOD, [b for b, _ in BAD]) for r in pair] + [b for b, _ in BAD[len(GOOD) :]]
    (root / "train.json").write_text(json.dumps(records))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def loaded(folder, processor):
    return load_llava_dataset(folder / "train.json", folder, processor)


def decoded_prompt(processor, ids) -> str:
    return processor.tokenizer.decode(ids).replace(RUN, "<image>")


def label_spans(processor, labels, **kwargs) -> list[str]:
    """Decode each contiguous run of supervised labels."""
    keep = (labels != IGNORE_INDEX).int()
    edges = torch.diff(torch.cat([torch.tensor([0]), keep, torch.tensor([0])])).tolist()
    starts = [i for i, e in enumerate(edges) if e == 1]
    ends = [i for i, e in enumerate(edges) if e == -1]
    return [processor.tokenizer.decode(labels[s:e], **kwargs) for s, e in zip(starts, ends)]


def test_prompts_follow_the_chat_template(loaded, processor):
    dataset, _ = loaded
    assert len(dataset) == len(GOOD)
    for example, expected, record in zip(dataset, EXPECTED_PROMPTS, GOOD):
        assert decoded_prompt(processor, example["input_ids"]) == expected
        n_images = len(record["image"]) if isinstance(record["image"], list) else 1
        assert (example["input_ids"] == processor.image_token_id).sum() == 576 * n_images
        assert torch.equal(example["attention_mask"], torch.ones_like(example["input_ids"]))


def test_labels_are_exactly_the_answers(loaded, processor):
    dataset, _ = loaded
    for example, answers in zip(dataset, EXPECTED_ANSWERS):
        assert label_spans(processor, example["labels"], skip_special_tokens=True) == answers
        assert label_spans(processor, example["labels"]) == [a + "</s>" for a in answers]
        supervised = example["labels"] != IGNORE_INDEX
        assert torch.equal(example["labels"][supervised], example["input_ids"][supervised])


def test_pixel_values_hold_the_images_in_tag_order(loaded, processor, folder):
    dataset, _ = loaded
    red, blue = (Image.open(folder / f"{c}.png") for c in ("red", "blue"))
    reference = processor.image_processor([red, blue], return_tensors="pt")["pixel_values"]
    two = dataset[2]["pixel_values"]
    assert two.shape == (2, 3, 96, 96) and two.dtype == torch.float32
    torch.testing.assert_close(two, reference, atol=0, rtol=0)
    torch.testing.assert_close(dataset[0]["pixel_values"], reference[:1], atol=0, rtol=0)
    assert dataset[3]["pixel_values"].shape == (1, 3, 96, 96)  # 192x96 resized and centre-cropped


def test_bad_records_are_counted_and_skipped(loaded, caplog, folder, processor):
    _, stats = loaded
    expected = {}
    for _, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats.kept == len(GOOD) and dict(stats.skipped) == expected
    assert stats.total == len(GOOD) + len(BAD)
    with caplog.at_level(logging.DEBUG, logger="lvprune.data.records"):
        load_llava_dataset(folder / "train.json", folder, processor)
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    missing = next(m for m in levels if m.startswith("skipping record missing: missing_image_file"))
    assert levels[missing] == logging.WARNING and "nope.png" in missing  # the file at fault is named
    assert levels["skipping record text: no_image"] == logging.DEBUG


def test_streaming_equals_map_style(loaded, folder, processor):
    dataset, stats = loaded
    stream, stream_stats = load_llava_dataset(folder / "train.json", folder, processor, streaming=True)
    assert stream_stats.total == 0  # nothing read yet
    for _ in range(2):  # a second pass starts the counts again
        examples = list(stream)
        assert stream_stats.kept == stats.kept and stream_stats.skipped == stats.skipped
    assert len(examples) == len(dataset)
    for streamed, mapped in zip(examples, dataset):
        assert streamed.keys() == mapped.keys()
        assert all(torch.equal(streamed[k], mapped[k]) for k in mapped)


def test_jsonl_equals_json(loaded, folder, processor):
    dataset, stats = loaded
    lines, line_stats = load_llava_dataset(folder / "train.jsonl", folder, processor)
    assert line_stats.skipped == stats.skipped and len(lines) == len(dataset)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(lines, dataset))


def test_text_only_records_can_be_kept(folder, processor):
    dataset, stats = load_llava_dataset(folder / "train.json", folder, processor, drop_text_only=False)
    assert stats.kept == len(GOOD) + 1 and "no_image" not in stats.skipped
    (text_only,) = [e for e in dataset if (e["input_ids"] == processor.image_token_id).sum() == 0]
    assert text_only["pixel_values"].shape == (0, 3, 96, 96)
    assert decoded_prompt(processor, text_only["input_ids"]) == (
        "<s>USER: How many circles are there? ASSISTANT: two</s>"
    )


def test_max_length_skips_long_records(loaded, folder, processor):
    dataset, _ = loaded
    lengths = [len(e["input_ids"]) for e in dataset]
    records = [normalize_record(r, i) for i, r in enumerate(GOOD)]
    assert [prompt_length(r, processor, 576) for r in records] == lengths  # counted without images
    limit = sorted(lengths)[1]
    short, stats = load_llava_dataset(folder / "train.json", folder, processor, max_length=limit)
    assert stats.skipped["too_long"] == sum(n > limit for n in lengths)
    assert [len(e["input_ids"]) for e in short] == [n for n in lengths if n <= limit]
    with pytest.raises(ValueError, match="max_length"):
        load_llava_dataset(folder / "train.json", folder, processor, max_length=0)


def test_generated_shapes_set_loads(tmp_path, processor):
    paths = make_shapes_dataset(tmp_path, {"train": 8}, ShapesConfig(turns=2))
    dataset, stats = load_llava_dataset(paths["train"], tmp_path, processor)
    assert stats.kept == 8 and not stats.skipped
    records = json.loads(paths["train"].read_text())
    for example, record in zip(dataset, records):
        assert label_spans(processor, example["labels"], skip_special_tokens=True) == [q["answer"] for q in record["qa"]]
        assert "<unk>" not in decoded_prompt(processor, example["input_ids"])
        assert example["pixel_values"].shape == (1, 3, 96, 96)


def test_encode_record_matches_the_processor_called_directly(folder, processor):
    """The loader's tokens are the stock processor's on the rendered prompt."""
    record = normalize_record(GOOD[1], 0)
    example = encode_record(record, folder, processor)
    text = EXPECTED_PROMPTS[1].removeprefix("<s>")
    direct = processor(text=text, images=[Image.open(folder / "blue.png")], return_tensors="pt")
    assert torch.equal(example["input_ids"], direct["input_ids"][0])
    np.testing.assert_array_equal(example["pixel_values"].numpy(), direct["pixel_values"].numpy())


# ------------------------------------------------------------------ records that must not stop a run


def one_record(image="red.png", roles=("human", "gpt"), record_id="r"):
    return {"id": record_id, "image": image, "conversations": [
        {"from": roles[0], "value": "<image>\nWhat colour is the square?"}, {"from": roles[1], "value": "red"}]}


@pytest.mark.parametrize("suffix, cut", [("png", 0.5), ("jpg", 0.5), ("jpg", 0.95)])
def test_a_truncated_image_is_skipped_and_named(tmp_path, processor, caplog, suffix, cut):
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / f"ok.{suffix}")
    whole = (tmp_path / f"ok.{suffix}").read_bytes()
    half = f"half.{suffix}"
    (tmp_path / half).write_bytes(whole[: int(len(whole) * cut)])  # a half-downloaded file: its header is valid
    with Image.open(tmp_path / half) as header_only:
        assert header_only.size == (96, 96)
    (tmp_path / "train.json").write_text(json.dumps([one_record(f"ok.{suffix}", record_id="a"),
                                                     one_record(half, record_id="b")]))
    with caplog.at_level(logging.WARNING, logger="lvprune.data.records"):
        dataset, stats = load_llava_dataset(tmp_path / "train.json", tmp_path, processor)
    assert stats.kept == 1 and dict(stats.skipped) == {"unreadable_image": 1}
    assert any("record b" in m and half in m for m in caplog.messages)
    assert len(dataset) == 1 and dataset[0]["pixel_values"].shape[0] == 1


def test_a_decompression_bomb_is_skipped(tmp_path, processor, monkeypatch):
    Image.new("RGB", (96, 96), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "train.json").write_text(json.dumps([one_record()]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 96 x 96 is then over twice PIL's limit
    with pytest.raises(NoRecords, match="unreadable_image=1"):
        load_llava_dataset(tmp_path / "train.json", tmp_path, processor)


def test_bad_jsonl_lines_are_skipped_and_counted(tmp_path, processor):
    Image.new("RGB", (96, 96), (255, 0, 0)).save(tmp_path / "red.png")
    good = json.dumps(one_record()).encode()
    lines = [b"\xef\xbb\xbf" + good, b'{"id": "cut", "conver', b'{"id": "\xff\xfe"}', good]  # BOM, cut, not UTF-8
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    dataset, stats = load_llava_dataset(tmp_path / "train.jsonl", tmp_path, processor)
    assert stats.kept == 2 and dict(stats.skipped) == {"unreadable_line": 2}
    streamed, _ = load_llava_dataset(tmp_path / "train.jsonl", tmp_path, processor, streaming=True)
    assert len(list(streamed)) == 2


def test_a_json_file_with_a_byte_order_mark_loads(tmp_path, processor):
    Image.new("RGB", (96, 96), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "train.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([one_record()]).encode())
    assert load_llava_dataset(tmp_path / "train.json", tmp_path, processor)[1].kept == 1
    (tmp_path / "bad.json").write_bytes(b"[" + json.dumps(one_record()).encode() + b", {")
    with pytest.raises(ValueError, match="bad.json is not a readable JSON list"):
        load_llava_dataset(tmp_path / "bad.json", tmp_path, processor)


@pytest.mark.parametrize("records, folder, message", [
    ([], ".", "kept 0 of 0 records"),
    ([one_record()], "elsewhere", "missing_image_file=1"),
    ([one_record(roles=("system", "gpt"))], ".", "bad_roles=1"),
])
def test_a_data_set_with_nothing_to_keep_ends_with_the_summary(tmp_path, processor, records, folder, message):
    Image.new("RGB", (96, 96), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "train.json").write_text(json.dumps(records))
    with pytest.raises(NoRecords, match=message) as error:
        load_llava_dataset(tmp_path / "train.json", tmp_path / folder, processor)
    assert "image_folder" in str(error.value)


def test_sharegpt_roles_load_as_llava_roles(tmp_path, processor):
    Image.new("RGB", (96, 96), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "a.json").write_text(json.dumps([one_record()]))
    (tmp_path / "b.json").write_text(json.dumps([one_record(roles=("user", "assistant"))]))
    a = load_llava_dataset(tmp_path / "a.json", tmp_path, processor)[0][0]
    b = load_llava_dataset(tmp_path / "b.json", tmp_path, processor)[0][0]
    assert all(torch.equal(a[k], b[k]) for k in a)
