"""The second base's supervision, held to the rendered images: each target points at the pixels it names."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lvprune_shapes.dataset import COLOURS, POSITIONS
from lvprune_shapes.reference.model import build_reference_model
from lvprune_shapes.reference.world2 import World2BaseConfig, World2TrainingSet, make_world2_base_data

CONFIG = World2BaseConfig(image_size=108, patch_size=6, num_layers=3, hidden_size=32, num_heads=2, num_kv_heads=2,
                          vision_hidden_size=16, train_records=25, test_records=1)
GRID = CONFIG.image_size // CONFIG.patch_size


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world2-base")
    processor, paths = make_world2_base_data(folder, CONFIG)
    model = build_reference_model(CONFIG, processor)
    data = World2TrainingSet(paths["train"], processor, model.config.image_token_id)
    records = json.loads(paths["train"][0].read_text())
    return processor, model.config.image_token_id, data, records, paths["train"][1]


def shown(folder, record, image: int, colour: str) -> set[int]:
    """Patches of the record's image (read back from its PNG) that show `colour` on a quarter of their pixels."""
    names = record["image"] if isinstance(record["image"], list) else [record["image"]]
    pixels = np.asarray(Image.open(folder / names[image]).convert("RGB"))
    hit = (pixels == np.asarray(COLOURS[colour], dtype=np.uint8)).all(-1)
    per_patch = hit.reshape(GRID, CONFIG.patch_size, GRID, CONFIG.patch_size).sum(axis=(1, 3)).reshape(-1)
    return set(np.nonzero(per_patch >= CONFIG.patch_size ** 2 / 4)[0].tolist())


def patches_of(keys, ids, image_token_id):
    """(image, patch) of each key position (prompt position of a vision row)."""
    vision = (ids == image_token_id).nonzero()[:, 0].tolist()
    return [divmod(vision.index(k), GRID * GRID) for k in keys]


def test_naming_words_attend_to_the_pixels_of_what_they_name(world):
    processor, image_token_id, data, records, folder = world
    checked = 0
    for record, example in zip(records, data.examples):
        ids = torch.as_tensor(example["input_ids"])
        grounding, naming = example["targets"]
        rows = dict(grounding)
        for row, _, _, _ in naming:
            word = processor.tokenizer.decode(ids[row])
            if word not in COLOURS:
                continue  # a cell ("in the north?"): its object's colour is read below through the list rows
            keys = rows[row]
            images = range(len(record["scenes"]))
            want = {(i, p) for i in images for p in shown(folder, record, i, word)}
            assert set(patches_of(keys, ids, image_token_id)) == want if want else keys == [0], (record["id"], word)
            checked += 1
    assert checked > 20


def test_list_answers_attend_to_each_next_object_then_the_sink(world):
    processor, image_token_id, data, records, folder = world
    tokenizer, checked = processor.tokenizer, 0
    for record, example in zip(records, data.examples):
        ids = torch.as_tensor(example["input_ids"])
        for row, keys in example["targets"][0]:
            following, here = tokenizer.decode(ids[row + 1]), tokenizer.decode(ids[row])
            if following in COLOURS:  # predicting an item's colour: its patches show that colour
                assert {p for _, p in patches_of(keys, ids, image_token_id)} <= shown(folder, record, 0, following)
                checked += 1
            elif following in POSITIONS and here == " ":  # predicting its cell: the patches lie in that cell
                cell = POSITIONS.index(following)
                for _, patch in patches_of(keys, ids, image_token_id):
                    row_, col = divmod(patch, GRID)
                    assert (row_ * 3 // GRID, col * 3 // GRID) == divmod(cell, 3), record["id"]
                checked += 1
            elif here in POSITIONS and following == "</s>":  # the last item named: nothing is next
                assert keys == [0]
    assert checked > 20


def test_alignment_words_name_each_patch_and_its_image(world):
    processor, _, data, records, folder = world
    batch = data.collate(data.examples[:6])
    convert = processor.tokenizer.convert_tokens_to_ids
    image = 0
    for record in records[:6]:
        for k, scene in enumerate(record["scenes"]):
            words = batch["alignment_words"][image]  # [V, 3]
            assert set(words[:, 2].tolist()) == {convert(["first", "second", "third", "fourth"][k])}
            for obj in scene:
                for patch in shown(folder, record, k, obj["colour"]) & {
                        p for p in range(GRID * GRID)
                        if (p // GRID * 3 // GRID) * 3 + (p % GRID * 3 // GRID) == POSITIONS.index(obj["position"])}:
                    assert batch["on_object"][image, patch]
                    assert words[patch, :2].tolist() == convert([obj["colour"], obj["position"]])
            image += 1
    assert image == len(batch["pixel_values"])


def test_a_step_run_one_example_at_a_time_is_the_step_run_at_once(world):
    """Micro-batches accumulate the batch's gradient: the same loss, the same update (read off the next loss)."""
    import dataclasses

    from lvprune_shapes.reference.train_reference import train_language_side

    processor, _, data, _, _ = world

    def loss_fn(model, probes, batch, config, head):
        # the first 5 positions precede any right padding, so an example's loss does not depend on its batch
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
        loss = logits[:, :5].pow(2).mean()
        return loss, {"answer": loss.item()}

    config = dataclasses.replace(CONFIG, steps=2, batch_size=4, warmup_steps=0)
    histories = [train_language_side(build_reference_model(config, processor), data, config, progress=False,
                                     loss_fn=loss_fn, micro_batch_size=chunk) for chunk in (None, 1, 3)]
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)
    assert histories[2] == pytest.approx(histories[0], rel=1e-4)
    assert histories[0][1] != pytest.approx(histories[0][0], rel=1e-3)  # the first step moved the weights


def test_a_missing_or_damaged_second_base_is_refused_with_what_to_do(tmp_path):
    from lvprune_shapes.job import JobConfig
    from lvprune_shapes.reference.cache import write_checksums
    from lvprune_shapes.reference.world2 import TRAIN_COMMAND, shipped_world2_base

    with pytest.raises(FileNotFoundError, match="not there. Train it with") as missing:
        shipped_world2_base(tmp_path)
    assert TRAIN_COMMAND in str(missing.value)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    write_checksums(tmp_path)
    assert shipped_world2_base(tmp_path) == tmp_path
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ValueError, match="model.safetensors do not match its SHA256SUMS; restore"):
        shipped_world2_base(tmp_path)
    with pytest.raises(ValueError, match="bench_world=3"):
        JobConfig(bench_world=3).check()


def test_a_colour_naming_more_objects_than_the_count_classes_is_counted_in_the_last_one():
    """A colour can name 20 objects over four images of five; the count head has LAYOUT[1] classes (the last one is
    "that many or more"), the per-image counts 4 (the last "3 or more"): the loss takes any prompt."""
    from lvprune_shapes.reference.world2 import LAYOUT, LAYOUT_TARGET, layout_loss, layout_target

    pairs = [(i, {"position": POSITIONS[k], "colour": "red"}) for i in range(4) for k in range(5)]
    target = layout_target(pairs)
    cells, count, images, holders, per_image = target.split(LAYOUT_TARGET)
    assert cells.tolist() == [1.0] * 5 + [0.0] * (len(POSITIONS) - 5) and count.item() == LAYOUT[1] - 1
    assert images.tolist() == [1.0] * 4 and holders.item() == 4 and per_image.tolist() == [3.0] * 4
    assert layout_target(pairs[:3])[len(POSITIONS)].item() == 3  # below the last class: the count itself
    loss = layout_loss(torch.zeros(2, sum(LAYOUT)), torch.stack([target, layout_target(pairs[:3])]))
    assert torch.isfinite(loss)
