"""Local stand-ins that let the training script run anywhere, with no download: a tiny random model of each
supported family and a synthetic shapes VQA set, each written to a folder on first use and reused afterwards.

    base_dir = materialise_tiny_base("outputs/assets")               # LLaVA-1.5: model + processor
    base_dir = materialise_tiny_base("outputs/assets", "qwen2_vl")   # another family (`tiny-random-qwen2_vl`)
    json_path, image_folder = materialise_shapes("outputs/assets", 64)
    json_path, image_folder = materialise_world2("outputs/assets", 64, image_size=108)  # the second world

Both are written into a temporary folder and renamed when complete, so concurrent or killed runs never see a
half-written one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lvprune.families import supported
from lvprune.families.tiny import tiny_llava
from lvprune.utils.atomic_files import write_folder
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.processor import build_family_processor, build_processor
from lvprune_shapes.world2 import make_world2_dataset, pruner_training_world

TINY_IMAGE_SIZE = 32  # 8 x 8 patches of 4 pixels: 64 vision tokens per image
TINY_PATCH_SIZE = 4
TINY_SEED = 0


def build_tiny_base():
    """A tiny random LLaVA (4 layers, hidden 64) and the closed-vocabulary processor that fits it."""
    processor = build_processor(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    tokenizer = processor.tokenizer
    model = tiny_llava(seed=TINY_SEED, vocab_size=len(tokenizer), image_size=TINY_IMAGE_SIZE,
                       patch_size=TINY_PATCH_SIZE)
    model.config.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config.text_config, name, getattr(tokenizer, name))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


# Config fields of the placeholder ids, and the tokenizer attribute holding each token.
PLACEHOLDERS = {"image_token_id": ("image_token", "context_image_token"), "video_token_id": ("video_token",),
                "vision_start_token_id": ("vision_bos_token",), "vision_end_token_id": ("vision_eos_token",)}


def build_tiny_family_base(model_type: str):
    """A tiny random model of family `model_type` (its `Backbone.tiny_config`) and the stock processor that fits
    it, over the closed vocabulary; the config's placeholder and special ids are the tokenizer's."""
    from transformers import AutoModelForImageTextToText

    if model_type == "llava":
        return build_tiny_base()
    processor = build_family_processor(model_type)
    tokenizer = processor.tokenizer
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    config = supported()[model_type].tiny_config(text=ids)
    for field, attributes in PLACEHOLDERS.items():
        token = next((getattr(tokenizer, a) for a in attributes if getattr(tokenizer, a, None)), None)
        if token is not None and getattr(config, field, None) is not None:
            setattr(config, field, tokenizer.convert_tokens_to_ids(token))
    torch.manual_seed(TINY_SEED)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def materialise_tiny_base(assets_dir, model_type: str = "llava") -> Path:
    """`assets_dir/tiny-random-<model_type>` (model and processor), built on first use."""
    target = Path(assets_dir) / f"tiny-random-{model_type}"

    def write(folder: Path) -> None:
        model, processor = build_tiny_family_base(model_type)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _materialise(target, write)


def materialise_shapes(assets_dir, num_samples: int, seed: int = 0) -> tuple[Path, Path]:
    """`assets_dir/shapes-<n>` (a train split of `num_samples` records); returns (json_path, image_folder)."""
    target = Path(assets_dir) / f"shapes-{num_samples}"
    config = ShapesConfig(seed=seed)

    def write(folder: Path) -> None:
        print(f"generating {num_samples} synthetic shapes records into {target} (once)", flush=True)
        make_shapes_dataset(folder, {"train": num_samples}, config)

    folder = _materialise(target, write)
    return folder / "train.json", folder


def materialise_world2(assets_dir, num_samples: int, image_size: int, seed: int = 0) -> tuple[Path, Path]:
    """`assets_dir/world2-<n>-<size>px`: a train split of `num_samples` conversations of the second world
    (up to 3 turns about 1-4 images of `image_size` pixels, the base's); returns (json_path, image_folder)."""
    target = Path(assets_dir) / f"world2-{num_samples}-{image_size}px"

    def write(folder: Path) -> None:
        print(f"generating {num_samples} world-2 conversations into {target} (once)", flush=True)
        make_world2_dataset(folder, {"train": num_samples}, pruner_training_world(image_size, seed))

    folder = _materialise(target, write)
    return folder / "train.json", folder


def _materialise(target: Path, write) -> Path:
    """`target`, written by `write(folder)` on first use (atomically: `lvprune.utils.atomic_files.write_folder`)."""
    return target if target.is_dir() else write_folder(target, write)
