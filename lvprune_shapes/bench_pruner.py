"""A pruner for the shapes benchmark when none is given: `lvprune.training` on the shapes training split, cached.

The base stays frozen; only the decision modules learn (paper §3), with the ratio loss pulling each stage's
kept fraction to its target. The cached folder's name is a digest of the base's weights and the training
settings, so a new base or new settings train anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from lvprune.training import TrainConfig, train
from lvprune.utils.atomic_files import write_folder
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.world2 import make_world2_dataset, pruner_training_world

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune" / "bench-pruners"
# The main job's recipe (configs/default.yaml): 600 steps of 8 on 4800 single-question records.
FULL = dict(train_records=4800, per_device_batch_size=8)
QUICK = dict(train_records=64, per_device_batch_size=8)


def training_config(base_dir: Path, data: tuple[Path, Path], output_dir: Path, *, per_device_batch_size: int,
                    gradient_accumulation_steps: int = 1, seed: int = 0) -> TrainConfig:
    """One epoch over `data` (json, image folder) at the paper's ratios and the main job's learning rate."""
    return TrainConfig(base_model=str(base_dir), data_path=str(data[0]), image_folder=str(data[1]),
                       output_dir=str(output_dir), per_device_batch_size=per_device_batch_size,
                       gradient_accumulation_steps=gradient_accumulation_steps, max_steps=0,
                       num_train_epochs=1, learning_rate=1e-3, warmup_ratio=0.03, seed=seed, cpu_threads=0,
                       logging_steps=50, report_to="none")


def bench_pruner(base_dir: str | Path, *, train_records: int, per_device_batch_size: int, image_size: int,
                 gradient_accumulation_steps: int = 1, cache_dir: str | Path | None = None, seed: int = 0,
                 world: int = 1) -> Path:
    """The folder of a pruner trained on the base at `base_dir`: from the cache if there, else trained now
    (a few minutes for the reference base) through `lvprune.training` and saved there. `world` 2 trains on the
    second world's conversations (up to 3 turns about 1-4 images) instead of single questions."""
    base_dir = Path(base_dir)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    batches = dict(per_device_batch_size=per_device_batch_size, gradient_accumulation_steps=gradient_accumulation_steps)
    recipe = training_config(base_dir, (Path("train.json"), Path(".")), Path("run"), **batches, seed=seed)
    described = {**dataclasses.asdict(recipe), "base_model": None, "train_records": train_records,
                 "image_size": image_size, **({"world": world} if world != 1 else {})}  # world 1's digests as before
    folder = cache / f"pruner-{_digest(base_dir, described)}"
    if (folder / "config.json").is_file():
        return folder
    print(f"training a pruner for {base_dir} on {train_records} records of world {world} (cached in {folder})",
          flush=True)

    def write(staging: Path) -> None:
        with tempfile.TemporaryDirectory(dir=staging.parent) as work:
            if world == 2:
                paths = make_world2_dataset(Path(work) / "data", {"train": train_records},
                                            pruner_training_world(image_size, seed))
            else:
                paths = make_shapes_dataset(Path(work) / "data", {"train": train_records},
                                            ShapesConfig(image_size=image_size, seed=seed))
            run = training_config(base_dir, (paths["train"], Path(work) / "data"), Path(work) / "run", **batches,
                                  seed=seed)
            train(run)
            shutil.copytree(Path(work) / "run" / "final", staging, dirs_exist_ok=True)
        (staging / "training_config.json").write_text(json.dumps(described, indent=1) + "\n")

    return write_folder(folder, write)


def _digest(base_dir: Path, described: dict) -> str:
    """A short digest of the base's weights and the training settings (names the cached pruner)."""
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for path in sorted(base_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
