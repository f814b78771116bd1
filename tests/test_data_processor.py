"""The closed-vocabulary LLaVA processor: image-token count, lossless tokenizer, template, round trip."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from lvprune_shapes.processor import CHAT_TEMPLATE, ProcessorConfig, build_processor, words_in

PROMPT = "USER: <image>\nWhere is the red circle? ASSISTANT: in the northwest</s>"


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (96, 96, 3), dtype=np.uint8))


def messages(*images):
    """Two turns; the first user turn holds the images, then the question."""
    first = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": "Where is the red circle?"}]
    return [
        {"role": "user", "content": first},
        {"role": "assistant", "content": [{"type": "text", "text": "in the northwest"}]},
        {"role": "user", "content": [{"type": "text", "text": "How many circles are there?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
    ]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 576),  # 96 / 4 = 24 patches a side
        ({"vision_feature_select_strategy": "full", "num_additional_image_tokens": 0}, 576),
        ({"image_size": 32, "patch_size": 8}, 16),
    ],
)
def test_image_token_count(kwargs, expected):
    proc = build_processor(**kwargs)
    size = proc.image_processor.crop_size["height"]
    imgs = [Image.new("RGB", (size, size)), Image.new("RGB", (2 * size, size))]  # any shape is cropped square
    out = proc(text=["USER: <image>\nIs there a blue square?", "<image> <image>"], images=[imgs[:1], imgs], padding=True)
    ids = torch.tensor(out["input_ids"])
    assert (ids == proc.image_token_id).sum(1).tolist() == [expected, 2 * expected]
    assert ProcessorConfig(**kwargs).image_seq_length == expected
    assert np.asarray(out["pixel_values"]).shape == (3, 3, size, size)


def test_tokenizer_is_lossless_word_level(processor):
    tok = processor.tokenizer
    ids = tok(PROMPT)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:8] == ["<s>", "USER", ":", " ", "<image>", "\n", "Where", " "]
    assert pieces[-6:] == ["in", " ", "the", " ", "northwest", "</s>"]
    assert tok.decode(ids) == "<s>" + PROMPT
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT.replace("<image>", "").replace("</s>", "")
    assert tok.convert_ids_to_tokens(tok("zebra")["input_ids"]) == ["<s>", "<unk>"]
    special = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, processor.image_token_id]
    assert special == [0, 1, 2, 3, 4]


def test_chat_template_renders_llava_v1(processor):
    text = processor.apply_chat_template(messages(None))
    assert text == (
        "USER: <image>\nWhere is the red circle? ASSISTANT: in the northwest</s>"
        "USER: How many circles are there? ASSISTANT: two</s>"
    )
    # image after the question, and a system prompt
    after = [{"role": "user", "content": [{"type": "text", "text": "What colour is the square?"}, {"type": "image"}]}]
    assert processor.apply_chat_template(after, add_generation_prompt=True) == (
        "USER: What colour is the square?\n<image> ASSISTANT: "
    )
    # the generation prompt is exactly the training text up to the first answer
    prompt = processor.apply_chat_template(messages(None)[:1], add_generation_prompt=True)
    assert text.startswith(prompt) and text[len(prompt) :].startswith("in the northwest</s>")


def test_assistant_mask_covers_answers_and_eos(processor, image):
    out = processor.apply_chat_template(
        messages(image), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    assert (ids == processor.image_token_id).sum() == 576
    assert processor.tokenizer.convert_ids_to_tokens(ids[mask]) == ["in", " ", "the", " ", "northwest", "</s>", "two", "</s>"]


def test_pixel_values_are_clip_normalised(processor, image):
    pixels = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"][0]
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None], torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255.0 - mean) / std
    torch.testing.assert_close(pixels, expected.float(), atol=1e-6, rtol=0)


def test_save_and_load_round_trip(processor, image, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor.save_pretrained(tmp_path)
    for loaded in (LlavaProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, LlavaProcessor)
        for attr in ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy", "image_token_id"):
            assert getattr(loaded, attr) == getattr(processor, attr)
        assert loaded.chat_template == CHAT_TEMPLATE == loaded.tokenizer.chat_template
        assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
        a = processor(text=PROMPT, images=[image], return_tensors="pt")
        b = loaded(text=PROMPT, images=[image], return_tensors="pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert loaded.tokenizer.decode(b["input_ids"][0, -9:]) == "ASSISTANT: in the northwest</s>"


def test_stock_llava_takes_the_processor_output(processor, image):
    """A tiny stock LLaVA (CLIP tower, 'default' strategy) finds one feature per placeholder."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=96, patch_size=4
        ),
        text_config=LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=len(processor.tokenizer),
        ),
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    inputs = processor(text=[PROMPT, PROMPT], images=[image, image], return_tensors="pt")
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
        logits = model(**inputs).logits
    assert sum(f.shape[0] for f in features) == (inputs["input_ids"] == processor.image_token_id).sum() == 2 * 576
    assert logits.shape == (2, inputs["input_ids"].shape[1], len(processor.tokenizer))


def test_vocabulary_from_other_texts():
    texts = ["A chat between a curious human and an AI.", "The human's question:"]
    words = words_in(texts)
    assert words == ["A", "AI", "The", "a", "an", "and", "between", "chat", "curious", "human", "question", "s"]
    tok = build_processor(words=tuple(words)).tokenizer
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 30, "patch_size": 4}, "multiple of patch_size"),
        ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
        ({"num_additional_image_tokens": 0}, "num_additional_image_tokens"),
        ({"extra_words": ("don't",)}, "letters and digits"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProcessorConfig(**kwargs)
