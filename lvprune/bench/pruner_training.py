"""A quick LVPruning pruner for a base model: `LVPruningForTraining` on the shapes training split.

The base stays frozen; only the decision modules learn (paper §3), with the ratio loss pulling each
stage's kept fraction to its target. `bench_pruner()` caches the result next to nothing else: its folder
name is a digest of the base's weights and the training config, so a new base or config trains anew.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..config import LVPrunerConfig
from ..data import LlavaCollator, ShapesConfig, load_llava_dataset, make_shapes_dataset
from ..modeling import LVPrunerModel
from ..training import LVPruningForTraining

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune" / "bench-pruners"


@dataclass(frozen=True)
class PrunerTrainingConfig:
    """How the quick pruner trains.

    keep_ratios: training targets per stage (paper: [ρ, ρ−0.2, ρ−0.4] with ρ = 0.5).
    after_layers: 1-based stage layers; None scales the paper's (1, 8, 16) of 32 layers to the base.
    train_records: single-question shapes records (the split the pruner sees; generated from `seed`).
    learning_rate, warmup_ratio: the peak rate, after a linear warm-up over that fraction of the steps and
        before a cosine decay to 0, as `train/train.py` schedules it.
    """

    keep_ratios: tuple[float, ...] = (0.5, 0.3, 0.1)
    after_layers: tuple[int, ...] | None = None
    train_records: int = 4800  # 600 steps of 8, as configs/default.yaml
    epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    gumbel_tau: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("train_records", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1).")

    def pruner_config(self, base_config) -> LVPrunerConfig:
        extra = {} if self.after_layers is None else {"after_layers": list(self.after_layers)}
        return LVPrunerConfig.from_base_config(base_config, keep_ratios=list(self.keep_ratios),
                                               gumbel_tau=self.gumbel_tau, **extra)


def shapes_training_split(data_dir: str | Path, n: int, image_size: int, seed: int = 0) -> tuple[Path, Path]:
    """A single-question shapes training split under `data_dir`: (json path, image folder)."""
    data_dir = Path(data_dir)
    paths = make_shapes_dataset(data_dir, {"train": n}, ShapesConfig(image_size=image_size, seed=seed))
    return paths["train"], data_dir


def train_pruner(base, processor, split: tuple, config: PrunerTrainingConfig | None = None,
                 progress: bool = True) -> LVPrunerModel:
    """Train decision modules on a frozen `base` over `split` = (json path, image folder); returns them
    in eval mode. The base leaves unchanged (same object, hooks removed)."""
    config = config or PrunerTrainingConfig()
    torch.manual_seed(config.seed)
    pruner = LVPrunerModel(config.pruner_config(base.config))
    dataset, _ = load_llava_dataset(*split, processor)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="right"))
    model = LVPruningForTraining(base, pruner).train()
    optimizer = torch.optim.AdamW(pruner.parameters(), lr=config.learning_rate, weight_decay=0.0)
    total = config.epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total), total)
    try:
        with tqdm(total=total, desc="pruner", disable=not progress) as bar:
            for _ in range(config.epochs):
                for batch in loader:
                    out = model(**batch)
                    out.loss.backward()
                    torch.nn.utils.clip_grad_norm_(pruner.parameters(), 1.0)
                    optimizer.step(), scheduler.step(), optimizer.zero_grad()
                    kept = ",".join(f"{f:.2f}" for f in out.keep_fractions.tolist())
                    bar.set_postfix(causal=f"{out.causal_loss.item():.3f}", kept=kept)
                    bar.update()
    finally:
        model.detach()
    return pruner.eval()


def _digest(base_dir: Path, config: PrunerTrainingConfig) -> str:
    """A short digest of the base's weights and the training config (names the cached pruner)."""
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for path in sorted(base_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def bench_pruner(base_dir: str | Path, base, processor, config: PrunerTrainingConfig | None = None, *,
                 cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The folder of a pruner trained on the base at `base_dir` (loaded as `base`, `processor`): from the
    cache if there, else trained now (a few minutes for the reference base) and saved there."""
    config = config or PrunerTrainingConfig()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    folder = cache / f"pruner-{_digest(Path(base_dir), config)}"
    if (folder / "config.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=cache))
    try:
        size = processor.image_processor.crop_size["height"]
        split = shapes_training_split(staging / "data", config.train_records, size, config.seed)
        pruner = train_pruner(base, processor, split, config, progress)
        shutil.rmtree(staging / "data")
        pruner.save_pretrained(staging)
        (staging / "training_config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
