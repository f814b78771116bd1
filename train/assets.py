"""Local stand-ins that let the training script run anywhere, with no download: a tiny random LLaVA and a
synthetic shapes VQA set, each written to a folder on first use and reused afterwards.

    base_dir = materialise_tiny_base("outputs/assets")          # model + processor, `from_pretrained`-able
    json_path, image_folder = materialise_shapes("outputs/assets", 64)

Both are written into a temporary folder and renamed when complete, so concurrent or killed runs never see a
half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lvprune.data.processor import build_processor
from lvprune.data.shapes import ShapesConfig, make_shapes_dataset
from lvprune.testing import tiny_llava

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


def materialise_tiny_base(assets_dir) -> Path:
    """`assets_dir/tiny-random-llava` (model and processor), built on first use."""
    target = Path(assets_dir) / "tiny-random-llava"

    def write(folder: Path) -> None:
        model, processor = build_tiny_base()
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


def _materialise(target: Path, write) -> Path:
    """Run `write(tmp_folder)` and rename the folder to `target`, unless `target` already exists."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another process won the race: its folder is as good as ours
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
