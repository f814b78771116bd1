"""The reference-base builder on a tiny budget: a loadable stock LLaVA + processor, its losses, its cache."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lvprune_shapes.dataset import COLOURS, NUMBERS, POSITIONS
from lvprune_shapes.processor import build_processor
from lvprune_shapes.reference import (
    REPORT_FILE,
    GroundingProbe,
    ReferenceConfig,
    ShapesTrainingSet,
    build_reference_model,
    load_reference,
    make_reference_data,
    object_patches,
    patch_labels,
    reference_base,
    reference_loss,
)
from lvprune_shapes.reference.cache import CHECKSUMS, verify_checksums

TINY = ReferenceConfig(image_size=24, patch_size=4, vision_hidden_size=16, vision_layers=1, vision_heads=2,
                       hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, train_records=8, test_records=8,
                       turns=2, steps=2, batch_size=4, vision_steps=2, vision_batch_size=4, warmup_steps=1)


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
    assert verify_checksums(folder) == [] and (folder / CHECKSUMS).is_file()  # ready to be shipped as it is


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
    assert (report["train_steps"], report["vision_steps"]) == (TINY.steps, TINY.vision_steps)
    assert report["test_questions"] == TINY.test_records
    assert 0.0 <= report["blank_accuracy"] <= 1.0 and 0.0 < report["chance_accuracy"] <= 1.0
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert reference_base(folder, TINY) == folder  # cached: not trained again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_patch_labels_by_hand():
    red = {"shape": "square", "colour": "red", "position": "northwest", "bbox": [4, 4, 12, 12]}
    small = {"shape": "circle", "colour": "red", "position": "east", "bbox": [18, 10, 20, 12]}  # one patch
    labels = patch_labels([red, small], image_size=24, patch_size=4).view(2, 6, 6)
    expected = torch.zeros(2, 6, 6, dtype=torch.long)
    expected[:, 1:3, 1:3] = torch.tensor([1, 1])[:, None, None]  # red (1), northwest (1)
    expected[:, 2, 4] = torch.tensor([1, 1 + POSITIONS.index("east")])
    assert torch.equal(labels, expected)


@pytest.fixture(scope="module")
def batch(data):
    processor, paths = data
    model = build_reference_model(TINY, processor).eval()
    train = ShapesTrainingSet(paths["train"], processor, model.config.image_token_id)
    return model, processor, train, train.collate([train[0], train[1], train[2]])


def test_grounding_targets_name_the_objects(batch, data):
    model, processor, train, b = batch
    records = json.loads(data[1]["train"][0].read_text())
    assert b["grounding_rows"].shape == (3 * TINY.turns, 2)
    assert torch.allclose(b["grounding_targets"].sum(-1), torch.ones(3 * TINY.turns))
    for (sample, row), target, cells in zip(b["grounding_rows"].tolist(), b["grounding_targets"], b["named_cells"]):
        word = processor.tokenizer.convert_ids_to_tokens(int(b["input_ids"][sample, row]))
        turn = records[sample]["qa"][[r for s, r in b["grounding_rows"].tolist() if s == sample].index(row)]
        words = turn["question"].rstrip("?").split()
        # the naming word: the cell of a colour question, the colour of every other question
        assert word == (words[-1] if turn["type"] == "colour" else next(w for w in words if w in COLOURS))
        named = [o for o in records[sample]["objects"] if word in (o["colour"], o["position"])]
        patches = [p for o in named for p in object_patches(o, TINY.image_size, TINY.patch_size).tolist()]
        vision = (b["input_ids"][sample] == model.config.image_token_id).nonzero()[:, 0]
        expected = torch.zeros_like(target)
        if patches:  # evenly on the named objects' patches
            expected[vision[patches]] = 1 / len(patches)
        else:  # nothing named: all on the <s> sink
            expected[0] = 1.0
        assert torch.allclose(target, expected)
        assert cells.nonzero()[:, 0].tolist() == sorted(POSITIONS.index(o["position"]) for o in named)


def test_grounding_attention_is_the_stock_attention(batch):
    """The probe's head-0 attention equals the weights stock eager attention returns."""
    model, processor, train, b = batch
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    probe = GroundingProbe(model, layer=1)
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            stock = model(**inputs, output_attentions=True).attentions[1][:, 0]  # [B, N, N]
            ours = probe.head0_log_probs(b["grounding_rows"]).exp()
    finally:
        model.set_attn_implementation("sdpa")
        probe.remove()
    rows = b["grounding_rows"]
    assert torch.allclose(ours, stock[rows[:, 0], rows[:, 1]], atol=1e-6)


def test_loss_is_the_stock_loss_plus_the_auxiliary_terms(batch):
    model, processor, train, b = batch
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    probes = (GroundingProbe(model, TINY.grounding_layer), GroundingProbe(model, TINY.grounding_layer + 1))
    off = replace(TINY, grounding_weight=0, alignment_weight=0, early_answer_weight=0, copy_weight=0, cells_weight=0)
    on = replace(TINY, grounding_weight=0.5, alignment_weight=2, early_answer_weight=0.25, copy_weight=3,
                 cells_weight=1.5)
    cell_head = torch.nn.Linear(TINY.hidden_size, len(POSITIONS) + len(NUMBERS))
    try:
        with torch.no_grad():
            plain, _ = reference_loss(model, probes, b, off)
            full, parts = reference_loss(model, probes, b, on, cell_head)
            model.set_attn_implementation("eager")
            stock = model(**inputs, labels=b["labels"], output_hidden_states=True, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
        for probe in probes:
            probe.remove()
    assert torch.allclose(plain, stock.loss, atol=1e-5)
    # early answer: the output at each naming word against the answer's key word
    rows = b["grounding_rows"]
    early = torch.nn.functional.cross_entropy(stock.logits[rows[:, 0], rows[:, 1]], b["answer_words"])
    assert parts["early_answer"] == pytest.approx(early.item(), rel=1e-4)
    assert processor.tokenizer.convert_ids_to_tokens(b["answer_words"].tolist()) == \
        [turn["answer"].split()[-1] for i in range(3) for turn in train_records(train, i)]
    # copy: head 0 one layer above the grounding layer, from each answer position to its naming word
    attention = stock.attentions[TINY.grounding_layer + 1][:, 0]
    copy = -attention[b["copy_rows"][:, 0], b["copy_rows"][:, 1], b["copy_keys"]].log().mean()
    assert parts["copy"] == pytest.approx(copy.item(), rel=1e-4)
    # alignment by hand: the grounding layer's normalised input at object patches vs the sum of the
    # embeddings of the patch's colour word and cell word
    layer = model.model.language_model.layers[TINY.grounding_layer]
    hidden = layer.input_layernorm(stock.hidden_states[TINY.grounding_layer])
    vision = b["input_ids"] == model.config.image_token_id
    embed, colours = model.get_input_embeddings().weight, list(COLOURS)
    distances = []
    for i, labels in enumerate(train[j]["patch_labels"] for j in range(3)):
        patches = hidden[i][vision[i]]
        for v in (labels[0] > 0).nonzero()[:, 0].tolist():
            words = [colours[labels[0, v] - 1], POSITIONS[labels[1, v] - 1]]
            target = embed[processor.tokenizer.convert_tokens_to_ids(words)].sum(0)
            distances.append(1 - torch.cosine_similarity(patches[v], target, dim=0))
    alignment = torch.stack(distances).mean().item()
    assert parts["alignment"] == pytest.approx(alignment, rel=1e-5)
    # cells: the naming word's normalised input to the layer above the grounding layer, through the head
    above = model.model.language_model.layers[TINY.grounding_layer + 1]
    logits = cell_head(above.input_layernorm(stock.hidden_states[TINY.grounding_layer + 1])[rows[:, 0], rows[:, 1]])
    named = [len([o for o in train_records_objects(train, s) if word in (o["colour"], o["position"])])
             for s, word in ((s, processor.tokenizer.convert_ids_to_tokens(int(b["input_ids"][s, r])))
                             for s, r in rows.tolist())]
    cells = (torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :9], b["named_cells"])
             + torch.nn.functional.cross_entropy(logits[:, 9:], torch.tensor(named)))
    assert parts["cells"] == pytest.approx(cells.item(), rel=1e-5)
    expected = (parts["answer"] + 0.5 * parts["grounding"] + 2 * alignment + 0.25 * early.item() + 3 * copy.item()
                + 1.5 * cells.item())
    assert full.item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="cell_head"):
        reference_loss(model, probes, b, on)


def train_records(train, i):
    return train.records[i]["qa"]


def train_records_objects(train, i):
    return train.records[i]["objects"]


def test_config_names_bad_values():
    with pytest.raises(ValueError, match="patch_size=5"):
        ReferenceConfig(image_size=24, patch_size=5)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ReferenceConfig(num_kv_heads=3)
    with pytest.raises(ValueError, match="batch_size=0"):
        ReferenceConfig(batch_size=0)
    with pytest.raises(ValueError, match="grounding_layer=3"):
        ReferenceConfig(grounding_layer=3)  # the copy needs the layer above
