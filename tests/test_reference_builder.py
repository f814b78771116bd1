"""The reference-base builder on a tiny budget: a loadable stock LLaVA + processor, its losses, its cache."""

import json

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lvprune.data import build_processor
from lvprune.reference import (
    REPORT_FILE,
    ReferenceConfig,
    ShapesTrainingSet,
    build_reference_model,
    load_reference,
    make_reference_data,
    patch_shape_labels,
    reference_base,
    reference_loss,
)

TINY = ReferenceConfig(image_size=24, patch_size=4, vision_hidden_size=16, vision_layers=1, vision_heads=2,
                       hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, train_records=8, test_records=8,
                       turns=2, batch_size=4, warmup_steps=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return reference_base(tmp_path_factory.mktemp("reference") / "base", TINY, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reference_data(tmp_path_factory.mktemp("reference-data"), TINY)


def test_folder_loads_as_stock_llava_and_processor(folder):
    model, processor = load_reference(folder)
    assert type(model) is LlavaForConditionalGeneration
    assert isinstance(processor, LlavaProcessor)
    assert model.config.text_config.hidden_size == TINY.hidden_size
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert not (folder / "data").exists()  # the training data is not kept with the model


def test_processor_round_trip_and_vision_token_count(folder):
    """The saved processor encodes like a freshly built one, with one placeholder per vision feature."""
    loaded = LlavaProcessor.from_pretrained(folder)
    fresh = build_processor(image_size=TINY.image_size, patch_size=TINY.patch_size)
    image = np.full((TINY.image_size, TINY.image_size, 3), 200, dtype=np.uint8)
    text = "USER: <image>\nHow many circles are there? ASSISTANT:"
    a, b = loaded(text=text, images=[image], return_tensors="pt"), fresh(text=text, images=[image], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert int((a["input_ids"] == loaded.tokenizer.convert_tokens_to_ids("<image>")).sum()) == TINY.vision_tokens
    assert loaded.tokenizer.decode(loaded.tokenizer("How many circles are there?")["input_ids"][1:]) == \
        "How many circles are there?"


def test_saved_model_runs_the_processor_output(folder):
    model, processor = load_reference(folder)
    image = np.full((TINY.image_size, TINY.image_size, 3), 120, dtype=np.uint8)
    inputs = processor(text="USER: <image>\nIs there a red square? ASSISTANT:", images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))


def test_report_and_cache_hit(folder):
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["config"]["hidden_size"] == TINY.hidden_size
    assert report["train_steps"] == TINY.train_records // TINY.batch_size
    assert report["test_questions"] == TINY.test_records
    assert 0.0 <= report["blank_accuracy"] <= 1.0 and 0.0 < report["chance_accuracy"] <= 1.0
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert reference_base(folder, TINY) == folder  # cached: not trained again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_patch_shape_labels_by_hand():
    tokenizer = build_processor(image_size=24, patch_size=4).tokenizer
    square = {"shape": "square", "colour": "red", "position": "top left", "bbox": [4, 4, 12, 12]}
    labels = patch_shape_labels([square], image_size=24, patch_size=4, tokenizer=tokenizer).view(6, 6)
    expected = torch.full((6, 6), -100)
    expected[1:3, 1:3] = tokenizer.convert_tokens_to_ids("square")
    assert torch.equal(labels, expected)
    # A patch a quarter covered counts; less does not.
    corner = {"shape": "circle", "colour": "blue", "position": "top left", "bbox": [2, 2, 4, 4]}
    assert (patch_shape_labels([corner], 24, 4, tokenizer) != -100).sum() == 1


def test_answer_loss_equals_the_stock_loss(data):
    """With no patch term, the training loss is exactly LlavaForConditionalGeneration's own loss."""
    processor, paths = data
    model = build_reference_model(TINY, processor).eval()
    train = ShapesTrainingSet(paths["train"], processor, TINY.patch_size)
    batch = train.collate([train[0], train[1]])
    with torch.no_grad():
        ours, _ = reference_loss(model, batch, patch_loss_weight=0.0)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"], labels=batch["labels"])
        with_patches, _ = reference_loss(model, batch, patch_loss_weight=0.5)
    assert torch.allclose(ours, out.loss, atol=1e-6)
    vision = batch["input_ids"] == model.config.image_token_id
    assert batch["patch_labels"].shape == (2, int(vision[0].sum()))
    # The patch term: the lm_head's prediction at each vision position against the shape under it.
    patch = torch.nn.functional.cross_entropy(out.logits[vision], batch["patch_labels"].flatten())
    assert torch.allclose(with_patches, out.loss + 0.5 * patch, atol=1e-5)


def test_config_names_bad_values():
    with pytest.raises(ValueError, match="patch_size=5"):
        ReferenceConfig(image_size=24, patch_size=5)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ReferenceConfig(num_kv_heads=3)
    with pytest.raises(ValueError, match="batch_size=0"):
        ReferenceConfig(batch_size=0)
