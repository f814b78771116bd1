"""The reference LLaVA: a stock `LlavaForConditionalGeneration` (CLIP tower, 2-layer projector, Llama LM)."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lvprune_shapes.reference.config import ReferenceConfig


def reference_llava_config(config: ReferenceConfig, tokenizer) -> LlavaConfig:
    """A LLaVA-1.5-shaped config (CLS dropped by the `default` strategy, last vision layer's features)."""
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=2 * config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=2048, rope_theta=config.rope_theta,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden_size, intermediate_size=2 * config.vision_hidden_size,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_hidden_size,
    )
    return LlavaConfig(
        text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=config.vision_tokens,
    )


def build_reference_model(config: ReferenceConfig, processor) -> LlavaForConditionalGeneration:
    """The untrained reference LLaVA (fp32, SDPA), initialised from `config.seed`."""
    torch.manual_seed(config.seed)
    llava_config = reference_llava_config(config, processor.tokenizer)
    llava_config._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(llava_config)
    tokenizer = processor.tokenizer
    model.generation_config.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, do_sample=False)
    return model
