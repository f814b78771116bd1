"""Tiny random LLaVA models built from config, for tests, demos and CPU benchmarks (no download)."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 3
PAD_TOKEN_ID = 0


def tiny_llava_config(*, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, vocab_size=96,
                      image_size=16, patch_size=4, vision_hidden=32, vision_layers=2,
                      intermediate_size=None) -> LlavaConfig:
    """A LLaVA-1.5-shaped config: CLIP tower, 2-layer projector, Llama LM (MLP width `intermediate_size`, default
    2 × hidden); `(image_size/patch_size)²` tokens/image."""
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096, pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden,
    )
    return LlavaConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )


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
        cuts = sorted(torch.randint(0, n_text, (n_images,), generator=generator).tolist())
        pieces, start = [], 0
        for cut in cuts:
            pieces += [text[start:cut], torch.full((per_image,), config.image_token_id)]
            start = cut
        rows.append(torch.cat(pieces + [text[start:]]))
    batch = pad_rows(rows, padding_side)
    total = sum(images_per_sample)
    if total:
        size = config.vision_config.image_size
        batch["pixel_values"] = torch.randn(total, 3, size, size, generator=generator)
    return batch


def pad_rows(rows, padding_side="left") -> dict:
    """Pad 1-D id tensors to a batch: -> input_ids, attention_mask [B, N]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_TOKEN_ID)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[b, span], mask[b, span] = row, 1
    return {"input_ids": ids, "attention_mask": mask}
