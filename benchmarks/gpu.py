"""The speed benchmark on a GPU, at LLaVA-1.5-7B's real shape (random weights, no download), in bf16.

    python benchmarks/gpu.py                                   # batches 1, 8, 32; sdpa, and flash_attention_2 if installed
    python benchmarks/gpu.py --batches 8 --attn sdpa --new_tokens 64

Builds the model from `configs/models/llava-1.5-7b/config.json` directly on the device and runs
`benchmarks/speed.py`'s table for each attention implementation: prefill ms, decode ms/token, KV MiB and peak
memory (`torch.cuda.max_memory_allocated`), each against the stock model and its FLOPs or bytes limit;
tokens/s follow from the decode column (batch / ms per token). `--reduced` keeps the config's proportions
at a CPU-sized width and depth (the test suite runs it that way, on the CPU).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from speed import measure_all, methods_for

from lvprune.settings import build_parser, doc, parse

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "models" / "llava-1.5-7b"


def build(config_dir, device, dtype, attn: str, reduced: bool):
    """LLaVA with random weights made on `device` in `dtype` (a 7B model is never materialised on the host)."""
    config = LlavaConfig.from_pretrained(config_dir)
    if reduced:  # the same proportions, CPU-sized: 4 layers of width 128 (head dim 64), a 2-layer 64-px tower
        text, vision = config.text_config, config.vision_config
        text.hidden_size, text.num_hidden_layers = 128, 4
        text.num_attention_heads = text.num_key_value_heads = 2
        text.head_dim = 64
        text.intermediate_size = round(128 * 11008 / 4096)
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 64, 128, 2
        vision.num_attention_heads, vision.image_size, vision.patch_size = 2, 96, 4
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def implementations(requested):
    if requested:
        return requested
    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@dataclass
class GPUConfig:
    """The model and what is timed."""

    model_config: str = doc(str(CONFIG), "folder of the config.json the random model is built from")
    batches: list[int] = doc([1, 8, 32], "batch sizes")
    new_tokens: int = doc(32, "decode steps timed")
    repeats: int = doc(3, "rounds; methods take turns in each")
    text_tokens: int = doc(30, "text tokens beside the vision tokens")
    attn: list[str] | None = doc(None, "attention implementations (unset: sdpa, and flash_attention_2 if installed)")
    device: str = doc("cuda", "torch device")
    dtype: Literal["bfloat16", "float16", "float32"] = doc("bfloat16", "weights and activations")
    reduced: bool = doc(False, "a CPU-sized model of the same proportions")


def main(argv=None) -> dict:
    parser = build_parser(GPUConfig, prog="python benchmarks/gpu.py", description=__doc__.splitlines()[0])
    args = parse(GPUConfig, argv, parser=parser)
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    found = {}
    for attn in implementations(args.attn):
        model = build(Path(args.model_config), torch.device(args.device), getattr(torch, args.dtype), attn, args.reduced)
        args.layers = model.config.text_config.num_hidden_layers
        print(f"\n## attention: {attn}")
        with torch.no_grad():
            found[attn] = measure_all(model, methods_for(model), args)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return found


if __name__ == "__main__":
    main()
