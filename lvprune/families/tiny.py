"""Tiny random LLaVA models built from config, for tests, demos and CPU benchmarks (no download)."""

from __future__ import annotations

import itertools

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from lvprune.families import llava

IMAGE_TOKEN_ID = 3
PAD_TOKEN_ID = 0


def tiny_llava_config(*, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, vocab_size=96,
                      image_size=16, patch_size=4, vision_hidden=32, vision_layers=2,
                      intermediate_size=None) -> LlavaConfig:
    """A LLaVA-1.5-shaped config: CLIP tower, 2-layer projector, Llama LM (MLP width `intermediate_size`, default
    2 × hidden); `(image_size/patch_size)²` tokens/image."""
    text = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads)
    return llava.tiny_config(image_size=image_size, patch_size=patch_size, vision_hidden=vision_hidden,
                             vision_layers=vision_layers, text=text)


def tiny_llava(seed: int = 0, **config_kwargs) -> LlavaForConditionalGeneration:
    """A random tiny LLaVA in fp32 and eval mode, with SDPA attention."""
    torch.manual_seed(seed)
    config = tiny_llava_config(**config_kwargs)
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config).eval()


def image_tokens_per_image(config: LlavaConfig) -> int:
    """Vision tokens one image contributes (CLS dropped by the `default` feature strategy)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def make_batch(config: LlavaConfig, images_per_sample, text_lengths, *, padding_side="left", seed=0) -> dict:
    """A padded batch of random prompts: sample b has `images_per_sample[b]` images, each a block of image
    tokens placed after a random number of text tokens, and `text_lengths[b]` text tokens in all.

    Returns `input_ids`, `attention_mask` [B, N] and `pixel_values` [total_images, 3, H, W] (if any image).
    """
    generator = torch.Generator().manual_seed(seed)
    per_image = image_tokens_per_image(config)
    vocab = config.text_config.vocab_size
    rows = []
    for n_images, n_text in zip(images_per_sample, text_lengths):
        text = torch.randint(4, vocab, (n_text,), generator=generator)
        # a random text token must never be the image placeholder (bases built from a processor put it at 4)
        text[text == config.image_token_id] = 5 if config.image_token_id == 4 else 4
        rows.append(with_image_blocks(text, n_images, itertools.repeat(per_image), config.image_token_id, generator))
    batch = pad_rows(rows, padding_side)
    total = sum(images_per_sample)
    if total:
        size = config.vision_config.image_size
        batch["pixel_values"] = torch.randn(total, 3, size, size, generator=generator)
    return batch


def with_image_blocks(text, n_images: int, lengths, image_id: int, generator) -> torch.Tensor:
    """`text` [T] with `n_images` blocks of `image_id` (their lengths drawn from the iterator `lengths`) inserted
    at random cuts, in order."""
    cuts = sorted(torch.randint(0, len(text), (n_images,), generator=generator).tolist())
    pieces, start = [], 0
    for cut in cuts:
        pieces += [text[start:cut], torch.full((next(lengths),), image_id)]
        start = cut
    return torch.cat(pieces + [text[start:]])


def pad_rows(rows, padding_side="left") -> dict:
    """Pad 1-D id tensors to a batch: -> input_ids, attention_mask [B, N]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_TOKEN_ID)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[b, span], mask[b, span] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------------------ every supported family


def tiny_model(model_type: str = "llava", seed: int = 0, attn: str = "sdpa", **config_overrides):
    """A random tiny model of a supported family (`lvprune.families`), fp32, eval mode, attention `attn`."""
    from transformers import AutoModelForImageTextToText

    from lvprune.families import supported

    config = supported()[model_type].tiny_config(**config_overrides)
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config, attn_implementation=attn).eval()


def vision_tokens_per_image(model, vision_inputs: dict) -> list[int]:
    """How many placeholder tokens each image of `vision_inputs` needs: what the stock model's
    `get_image_features` returns for it (so the count is the model's, not a formula of ours)."""
    with torch.no_grad():
        features = model.model.get_image_features(**vision_inputs)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, torch.Tensor):
        return [features.shape[1]] * features.shape[0]
    return [len(f) for f in features]


def family_batch(model, images_per_sample, text_lengths, *, padding_side="left", seed=0, vision=None) -> dict:
    """A padded batch of random prompts for `model` of any supported family: sample b holds
    `images_per_sample[b]` images, each a block of placeholders placed among `text_lengths[b]` random text
    tokens, plus the family's vision inputs (`pixel_values`, `image_sizes`, `image_grid_thw`, ...; `vision`
    gives them instead of the family's random images) and per-token inputs (`mm_token_type_ids`)."""
    from lvprune.families import TINY_FIRST_TEXT_ID, backbone_for

    backbone = backbone_for(model.config)
    generator = torch.Generator().manual_seed(seed)
    total = sum(images_per_sample)
    if vision is None:
        vision = backbone.random_images(model.config, total, generator) if total else {}
    per_image = iter(vision_tokens_per_image(model, vision) if total else [])
    image_id = backbone.vision_token_ids(model.config)[0]
    rows = []
    for n_images, n_text in zip(images_per_sample, text_lengths):
        text = torch.randint(TINY_FIRST_TEXT_ID, model.config.get_text_config().vocab_size, (n_text,),
                             generator=generator)
        rows.append(with_image_blocks(text, n_images, per_image, image_id, generator))
    batch = {**pad_rows(rows, padding_side), **vision}
    if backbone.token_types is not None:
        batch.update(backbone.token_types(batch["input_ids"], model.config))
    return batch
