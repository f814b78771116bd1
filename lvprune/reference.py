"""The reference base model: a small LLaVA trained from scratch on the synthetic shapes VQA, on CPU.

It is what lvprune's benchmark prunes: a stock `LlavaForConditionalGeneration` (CLIP-style vision tower,
2-layer projector, Llama language model) built from config, that answers the shapes questions from the
image and falls to chance without it. `reference_base()` returns its folder (weights, processor and
`reference_report.json` with the training time and test accuracies), training it on first use.

Training is deterministic in `ReferenceConfig.seed` (on one machine). Besides the answer tokens, the
vision positions of the language model are supervised with the shape word of the object under each patch
(`patch_loss_weight`, 0 turns it off): an auxiliary dense loss through the model's own `lm_head` that gets
a from-scratch model past the "answer from the question alone" plateau within a CPU budget of minutes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from .data import LlavaCollator, ShapesConfig, build_processor, load_llava_dataset, make_shapes_dataset
from .data.shapes import BACKGROUND, draw_scene

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune" / "reference-base"
REPORT_FILE = "reference_report.json"


@dataclass(frozen=True)
class ReferenceConfig:
    """Sizes, data and schedule of the reference base (defaults: the committed model; see README).

    image_size / patch_size: `(image_size // patch_size) ** 2` vision tokens per image.
    train_records, turns: training images and questions asked about each (one turn each is cheap next to
        the image's tokens, so several turns per image buy supervision at little cost).
    patch_loss_weight: weight of the auxiliary per-patch shape loss (0 turns it off).
    """

    image_size: int = 96
    patch_size: int = 6
    object_size: tuple[float, float] = (0.5, 0.8)
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    rope_theta: float = 10000.0
    train_records: int = 5000
    test_records: int = 500
    turns: int = 8
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    patch_loss_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}.")
        for name in ("vision_hidden_size", "hidden_size"):
            heads = self.vision_heads if name.startswith("vision") else self.num_heads
            if getattr(self, name) % heads:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of its heads ({heads}).")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}.")
        for name in ("train_records", "test_records", "turns", "epochs", "batch_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.learning_rate <= 0 or self.patch_loss_weight < 0 or self.warmup_steps < 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0, patch_loss_weight="
                             f"{self.patch_loss_weight} and warmup_steps={self.warmup_steps} >= 0.")

    @property
    def vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# ----------------------------------------------------------------------------- data


def make_reference_data(data_dir: str | Path, config: ReferenceConfig):
    """Write the training split (`config.turns` questions per image) and the single-question test split.

    Returns the processor and `{"train": (json, image_folder), "test": (json, image_folder)}`. The test
    split is the shapes generator's default test split for `config.seed` and `config.test_records`.
    """
    data_dir = Path(data_dir)
    processor = build_processor(image_size=config.image_size, patch_size=config.patch_size)
    shapes = ShapesConfig(image_size=config.image_size, object_size=config.object_size, seed=config.seed)
    train = make_shapes_dataset(data_dir / "train", {"train": config.train_records},
                                dataclasses.replace(shapes, turns=config.turns))
    test = make_shapes_dataset(data_dir / "test", {"test": config.test_records}, shapes)
    return processor, {"train": (train["train"], data_dir / "train"), "test": (test["test"], data_dir / "test")}


def patch_shape_labels(objects: list[dict], image_size: int, patch_size: int, tokenizer) -> torch.Tensor:
    """The shape word id of the object covering each patch (a quarter of its pixels or more), -100 elsewhere.

    objects: a shapes record's `objects` (pixel boxes); -> [(image_size // patch_size) ** 2] long, row-major.
    """
    grid = image_size // patch_size
    labels = torch.full((grid * grid,), -100, dtype=torch.long)
    for obj in objects:
        pixels = np.asarray(draw_scene([obj], image_size)) != np.asarray(BACKGROUND, dtype=np.uint8)
        covered = pixels.any(-1).reshape(grid, patch_size, grid, patch_size).sum(axis=(1, 3)).reshape(-1)
        labels[torch.from_numpy(covered >= patch_size * patch_size / 4)] = tokenizer.convert_tokens_to_ids(obj["shape"])
    return labels


class ShapesTrainingSet(torch.utils.data.Dataset):
    """The LLaVA-format training examples of a shapes split, each with its `patch_labels` [V]."""

    def __init__(self, split: tuple, processor, patch_size: int):
        json_path, image_folder = split
        self.examples, stats = load_llava_dataset(json_path, image_folder, processor)
        records = json.loads(Path(json_path).read_text())
        if stats.kept != len(records):
            raise ValueError(f"{json_path}: {stats.summary()}; every shapes record should load.")
        size = processor.image_processor.crop_size["height"]
        self.patch_labels = [patch_shape_labels(r["objects"], size, patch_size, processor.tokenizer) for r in records]
        self.collator = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="right")

    def __len__(self) -> int:
        return len(self.patch_labels)

    def __getitem__(self, index: int) -> dict:
        return {**self.examples[index], "patch_labels": self.patch_labels[index]}

    def collate(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        batch["patch_labels"] = torch.stack([e["patch_labels"] for e in examples])
        return batch

    def loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=True, drop_last=True,
                                           generator=generator, collate_fn=self.collate)


# ----------------------------------------------------------------------------- model


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


# ----------------------------------------------------------------------------- training


def reference_loss(model, batch: dict, patch_loss_weight: float) -> tuple[torch.Tensor, dict]:
    """Answer-token cross-entropy plus `patch_loss_weight` × the per-patch shape cross-entropy.

    batch: collated `input_ids`, `attention_mask`, `labels` [B, N], `pixel_values`, and `patch_labels`
    [B, V] (the shape word id under each vision token, -100 on background).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"]).logits
    answer = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    vision = batch["input_ids"] == model.config.image_token_id
    patch = F.cross_entropy(logits[vision], batch["patch_labels"].flatten()) if patch_loss_weight else answer * 0
    return answer + patch_loss_weight * patch, {"answer": answer.item(), "patch": patch.item()}


def warmup_cosine(optimizer, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_model(model, data: ShapesTrainingSet, config: ReferenceConfig, progress: bool = True) -> list[float]:
    """Train every parameter of `model` on `data` for `config.epochs`; returns the loss of each step."""
    from tqdm.auto import tqdm

    loader = data.loader(config.batch_size, seed=config.seed)
    total = config.epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = warmup_cosine(optimizer, config.warmup_steps, total)
    model.train()
    losses = []
    with tqdm(total=total, desc="reference base", disable=not progress) as bar:
        for _ in range(config.epochs):
            for batch in loader:
                loss, parts = reference_loss(model, batch, config.patch_loss_weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step(), schedule.step(), optimizer.zero_grad()
                losses.append(loss.item())
                bar.set_postfix(answer=f"{parts['answer']:.3f}", patch=f"{parts['patch']:.3f}")
                bar.update()
    return losses


def train_reference(out_dir: str | Path, config: ReferenceConfig | None = None, *, data_dir: str | Path | None = None,
                    progress: bool = True) -> dict:
    """Train the reference base from scratch, evaluate it and save it to `out_dir`; returns its report.

    The folder holds `save_pretrained` weights + config, the processor, and `reference_report.json`
    (config, training seconds, test accuracy overall / per question type / with blank images, chance).
    """
    from .bench.evaluate import evaluate_answers

    config = config or ReferenceConfig()
    out_dir = Path(out_dir)
    data_dir = Path(data_dir) if data_dir is not None else out_dir / "data"
    processor, paths = make_reference_data(data_dir, config)
    model = build_reference_model(config, processor)
    start = time.perf_counter()
    losses = train_model(model, ShapesTrainingSet(paths["train"], processor, config.patch_size), config, progress)
    seconds = time.perf_counter() - start
    model.eval()
    report = {"config": asdict(config), "train_seconds": round(seconds, 1), "train_steps": len(losses),
              "final_loss": losses[-1], "threads": torch.get_num_threads()}
    report.update(evaluate_answers(model, processor, *paths["test"], progress=progress))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report


# ----------------------------------------------------------------------------- cache


def is_reference_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / REPORT_FILE).is_file()


def reference_base(cache_dir: str | Path | None = None, config: ReferenceConfig | None = None,
                   progress: bool = True) -> Path:
    """The folder of the reference base: `cache_dir` (default `~/.cache/lvprune/reference-base`) if it
    already holds one, else trained there now (about 15 minutes on 2 CPU cores with the default config).

    Training writes to a temporary sibling folder first, so an interrupted run never leaves half a model.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    if is_reference_folder(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        train_reference(staging, config, data_dir=staging / "data", progress=progress)
        shutil.rmtree(staging / "data")
        if folder.exists():
            folder.rmdir()  # only an empty folder may be replaced
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_reference(folder: str | Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The saved reference model (eval mode, fp32) and its processor."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, LlavaProcessor.from_pretrained(folder)
