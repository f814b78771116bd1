"""Stage 2 and the whole recipe: train, evaluate and save the reference base."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lvprune_shapes.dataset import NUMBERS, POSITIONS
from lvprune_shapes.reference.config import ReferenceConfig
from lvprune_shapes.reference.data import ShapesTrainingSet, make_reference_data
from lvprune_shapes.reference.grounding import GroundingProbe
from lvprune_shapes.reference.model import build_reference_model
from lvprune_shapes.reference.vision import pretrain_vision_tower

REPORT_FILE = "reference_report.json"


LAYOUT_OUTPUTS = len(POSITIONS) + len(NUMBERS)  # which cells hold the named objects; how many there are


def layout_loss(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the first 9 logits against the named cells plus cross-entropy of the other 10
    against their number. logits [R, LAYOUT_OUTPUTS]; cells [R, 9] (0/1).

    Told only the cells, the model learned them but read the count off them slowly (77% of the training
    count questions after the full budget); told the number at the same place, it has to form it there.
    """
    count = cells.sum(-1).long()
    return (F.binary_cross_entropy_with_logits(logits[:, : len(POSITIONS)], cells)
            + F.cross_entropy(logits[:, len(POSITIONS) :], count))


def reference_loss(model, probes: tuple[GroundingProbe, GroundingProbe], batch: dict, config: ReferenceConfig,
                   cell_head: torch.nn.Module | None = None):
    """Answer cross-entropy plus the weighted auxiliary terms (see `ReferenceConfig`): grounding and
    alignment (read by `probes[0]`, at the grounding layer), early answer, copy and cells (`probes[1]`, one
    layer up; cells through `cell_head`, a linear map from the hidden size to `LAYOUT_OUTPUTS`).

    Returns (loss, {"answer", "grounding", "alignment", "early_answer", "copy", "cells"} as floats); "answer"
    is the stock model's own language-modelling loss on `labels`.
    """
    if config.cells_weight and cell_head is None:
        raise ValueError("cells_weight > 0 needs a cell_head (a Linear(hidden_size, LAYOUT_OUTPUTS)).")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], labels=batch["labels"])
    answer, logits = out.loss, out.logits
    grounding_probe, copy_probe = probes
    rows, vision = batch["grounding_rows"], batch["input_ids"] == model.config.image_token_id
    terms = {
        "grounding": lambda: grounding_probe.attention_loss(rows, batch["grounding_targets"]),
        "alignment": lambda: grounding_probe.alignment_loss(vision, batch["alignment_words"], batch["on_object"]),
        "early_answer": lambda: F.cross_entropy(logits[rows[:, 0], rows[:, 1]], batch["answer_words"]),
        "copy": lambda: copy_probe.copy_loss(batch["copy_rows"], batch["copy_keys"]),
        "cells": lambda: layout_loss(cell_head(copy_probe.captured["hidden"][rows[:, 0], rows[:, 1]]),
                                     batch["named_cells"]),
    }
    return weighted_sum(answer, terms, config)


def weighted_sum(answer: torch.Tensor, terms: dict, config, skip=()) -> tuple[torch.Tensor, dict]:
    """`answer` + Σ `config.<name>_weight` × `terms[name]()` (a term is not computed at weight 0 or in `skip`);
    -> (loss, {"answer" and each term's name: float})."""
    loss, parts = answer, {"answer": answer.item()}
    for name, term in terms.items():
        weight = getattr(config, f"{name}_weight")
        value = term() if weight and name not in skip else answer.new_zeros(())
        loss = loss + weight * value
        parts[name] = value.item()
    return loss, parts


def train_language_side(model, data: ShapesTrainingSet, config: ReferenceConfig, progress: bool = True, *,
                        loss_fn=reference_loss, head_outputs: int = LAYOUT_OUTPUTS,
                        micro_batch_size: int | None = None) -> list[float]:
    """Stage 2: the projector and the language model learn the answers (the tower stays frozen). `loss_fn(model,
    probes, batch, config, head)` gives (loss, parts); `head` is a Linear(hidden_size, head_outputs), thrown
    away afterwards (the second world's base passes its own loss and layout head). `micro_batch_size`: a step's
    batch is run in chunks of this many examples, each chunk's loss weighted by its share of the batch (None:
    the batch at once)."""
    model.model.vision_tower.requires_grad_(False).eval()
    torch.manual_seed(config.seed)
    cell_head = torch.nn.Linear(config.hidden_size, head_outputs)  # thrown away afterwards
    params = [p for p in model.parameters() if p.requires_grad] + list(cell_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    probes = (GroundingProbe(model, config.grounding_layer), GroundingProbe(model, config.grounding_layer + 1))
    model.model.language_model.train(), model.model.multi_modal_projector.train()
    history = []
    try:
        with tqdm(range(config.steps), desc="language model", disable=not progress) as bar:
            for _ in bar:
                index = torch.randint(len(data), (config.batch_size,), generator=generator).tolist()
                chunk = micro_batch_size or len(index)
                step_loss, step_parts = 0.0, {}
                for start in range(0, len(index), chunk):
                    part = index[start : start + chunk]
                    loss, parts = loss_fn(model, probes, data.collate([data[i] for i in part]), config, cell_head)
                    share = len(part) / len(index)
                    (loss * share).backward()
                    step_loss += loss.item() * share
                    step_parts = {k: step_parts.get(k, 0.0) + v * share for k, v in parts.items()}
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step(), schedule.step(), optimizer.zero_grad()
                history.append(step_loss)
                bar.set_postfix({k: f"{v:.3f}" for k, v in step_parts.items()})
    finally:
        for probe in probes:
            probe.remove()
    model.requires_grad_(True)  # back to a plain, fully trainable model
    return history


def train_reference(out_dir: str | Path, config: ReferenceConfig | None = None, *, data_dir: str | Path | None = None,
                    progress: bool = True) -> dict:
    """Train the reference base from scratch, evaluate it and save it to `out_dir`; returns its report.

    The folder holds `save_pretrained` weights + config, the processor, and `reference_report.json`
    (config, seconds per stage, test accuracy overall / per question type / with blank images, chance).
    """
    from lvprune.bench.evaluate import evaluate_answers

    config = config or ReferenceConfig()
    out_dir = Path(out_dir)
    processor, paths = make_reference_data(data_dir if data_dir is not None else out_dir / "data", config)
    model = build_reference_model(config, processor)
    data = ShapesTrainingSet(paths["train"], processor, model.config.image_token_id)
    start = time.perf_counter()
    vision = pretrain_vision_tower(model.model.vision_tower, *data.vision_inputs(), steps=config.vision_steps,
                                   batch_size=config.vision_batch_size,
                                   learning_rate=config.vision_learning_rate, seed=config.seed, progress=progress)
    middle = time.perf_counter()
    language = train_language_side(model, data, config, progress)
    end = time.perf_counter()
    model.eval()
    report = {"config": asdict(config), "vision_seconds": round(middle - start, 1),
              "language_seconds": round(end - middle, 1), "train_seconds": round(end - start, 1),
              "train_steps": len(language), "vision_steps": len(vision), "final_loss": language[-1],
              "threads": torch.get_num_threads()}
    report.update(evaluate_answers(model, processor, *paths["test"], progress=progress))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report
