"""LlavaCollator: padding on either side and image concatenation, against per-sample values."""

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lvprune.data.collator import LlavaCollator
from lvprune.data.llava_format import IGNORE_INDEX, encode_record
from lvprune_shapes.processor import build_processor

PAD = 0


def example(length: int, n_images: int, seed: int) -> dict:
    """A fake example: distinct token values, labels on the last two tokens, n_images images."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (length,), generator=g)
    labels = torch.full((length,), IGNORE_INDEX).index_copy(0, torch.arange(length - 2, length), ids[-2:])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(length, dtype=torch.long),
        "pixel_values": torch.randn(n_images, 3, 8, 8, generator=g),
        "labels": labels,
    }


EXAMPLES = [example(7, 1, 0), example(4, 0, 1), example(9, 2, 2)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_keeps_each_sample(side):
    batch = LlavaCollator(pad_token_id=PAD, padding_side=side)(EXAMPLES)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (3, 9)
    for row, ex in enumerate(EXAMPLES):
        n = len(ex["input_ids"])
        real = slice(0, n) if side == "right" else slice(9 - n, 9)
        pad = slice(n, 9) if side == "right" else slice(0, 9 - n)
        for key, fill in (("input_ids", PAD), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
            assert torch.equal(batch[key][row, real], ex[key])
            assert (batch[key][row, pad] == fill).all()
    assert batch["input_ids"].dtype == torch.long


def test_pixel_values_concatenate_in_batch_order():
    batch = LlavaCollator(pad_token_id=PAD)(EXAMPLES)
    expected = torch.cat([EXAMPLES[0]["pixel_values"], EXAMPLES[2]["pixel_values"]])  # 1 + 0 + 2 images
    assert torch.equal(batch["pixel_values"], expected)
    no_images = LlavaCollator(pad_token_id=PAD)([EXAMPLES[1], EXAMPLES[1]])
    assert "pixel_values" not in no_images


def test_pad_to_multiple_and_lists_and_missing_labels():
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [8], "attention_mask": [1]}]
    batch = LlavaCollator(pad_token_id=PAD, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch.keys() == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    "kwargs, message",
    [({"padding_side": "middle"}, "padding_side"), ({"pad_to_multiple_of": 0}, "pad_to_multiple_of")],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlavaCollator(pad_token_id=PAD, **kwargs)


def test_rejects_mixed_image_sizes():
    odd = example(3, 1, 3) | {"pixel_values": torch.zeros(1, 3, 4, 4)}
    with pytest.raises(ValueError, match="share one"):
        LlavaCollator(pad_token_id=PAD)([EXAMPLES[0], odd])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny stock LLaVA (CLIP tower, 16 px images) and three encoded examples with 1, 0 and 2 images."""
    folder = tmp_path_factory.mktemp("images")
    processor = build_processor(image_size=16, patch_size=4)
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (16, 16), colour).save(folder / f"{name}.png")
    convs = [
        ("<image>\nWhat colour is the square?", "red", ["a.png"]),
        ("How many circles are there?", "two", []),
        ("<image>\n<image>\nWhere is the red circle?", "in the northwest", ["a.png", "b.png"]),
    ]
    records = [
        {"id": str(i), "images": images, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for i, (q, a, images) in enumerate(convs)
    ]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4
        ),
        text_config=LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=len(processor.tokenizer),
        ),
        image_token_id=processor.image_token_id,
        vision_feature_layer=-1,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    return model, processor, [encode_record(r, folder, processor) for r in records]


def alone(ex: dict, keys=("input_ids", "attention_mask")) -> dict:
    """One example as a batch of one; `pixel_values` only when it has images."""
    inputs = {k: ex[k][None] for k in keys}
    return inputs | ({"pixel_values": ex["pixel_values"]} if len(ex["pixel_values"]) else {})


def test_right_padded_batch_gives_the_per_sample_logits(tiny):
    """Training layout: each row of the batch has the logits of its sample run alone."""
    model, processor, examples = tiny
    batch = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id)(examples)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    with torch.no_grad():
        logits = model(**batch).logits
        for row, ex in enumerate(examples):
            reference = model(**alone(ex, ("input_ids", "attention_mask", "labels"))).logits[0]
            torch.testing.assert_close(logits[row, : len(ex["input_ids"])], reference, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_generates_the_per_sample_tokens(tiny):
    """Generation layout: greedy `generate` on the left-padded prompts equals each prompt alone."""
    model, processor, examples = tiny
    prompts = []
    for ex in examples:  # cut each example before its answer
        n = int((ex["labels"] != IGNORE_INDEX).nonzero().min())
        prompts.append({k: ex[k][:n] for k in ("input_ids", "attention_mask")} | {"pixel_values": ex["pixel_values"]})
    batch = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="left")(prompts)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
        for row, prompt in enumerate(prompts):
            reference = model.generate(**alone(prompt), max_new_tokens=5, do_sample=False)[0, -5:]
            assert out[row].tolist() == reference.tolist()
