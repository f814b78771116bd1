"""The second world's reference base: 8 decoder layers, 324 vision tokens an image, trained on world 2's tasks.

The first base's recipe (`train_reference`) with its supervision extended to what world 2 asks
(`lvprune_shapes.world2`):
- alignment: an object patch's hidden state at the grounding layer is turned towards the embeddings of its colour
  word, its cell word *and the ordinal of its image* ("second"), so that reading a patch tells which image it is in;
- grounding (head 0 of the grounding layer): the naming word of a question attends to the named objects' patches
  in every image (or the `<s>` sink); in a list answer, the positions that predict an item's colour and cell
  words, and its cell word itself (which predicts "," or the end), attend to the next item's patches (the sink
  after the last): "the next object after the last cell named";
- early answer, copy: as in the first world, at the naming word of every question that has one;
- layout (one layer up, a linear head thrown away afterwards): at the naming word, which cells hold named
  objects, how many there are, which images hold one, how many images, and how many each image holds.

Everything else (the stock LLaVA, the frozen-tower stage 1, the schedule) is the first world's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lvprune.data import LlavaCollator
from lvprune.utils.command_line import doc, parse
from lvprune_shapes.dataset import COLOURS, POSITIONS
from lvprune_shapes.processor import build_processor
from lvprune_shapes.reference.config import ReferenceConfig
from lvprune_shapes.reference.data import encoded_split
from lvprune_shapes.reference.model import build_reference_model
from lvprune_shapes.reference.targets import answer_spans, object_patches, patch_labels
from lvprune_shapes.reference.train_reference import train_language_side, weighted_sum
from lvprune_shapes.reference.vision import pretrain_vision_tower
from lvprune_shapes.world2 import ORDINALS, World2Config, make_world2_dataset, vocabulary

MAX_IMAGES = len(ORDINALS)
# layout head: 9 cells (BCE), named count 0..9, 4 images (BCE), images holding one 0..4, per image 0..3 (x 4)
LAYOUT = (len(POSITIONS), 10, MAX_IMAGES, MAX_IMAGES + 1, MAX_IMAGES * 4)
LAYOUT_TARGET = (len(POSITIONS), 1, MAX_IMAGES, 1, MAX_IMAGES)  # 0/1 cells, count, 0/1 images, holders, counts


@dataclass(frozen=True)
class World2BaseConfig(ReferenceConfig):
    """`ReferenceConfig` with the second base's defaults: deeper, larger images.

    turns: at most this many questions a training record asks (as many as its scenes hold, up to it): a question
        costs a dozen tokens next to an image's 324, and the first base learned from 12 an image where 3 left
        the second one guessing. test_turns: the test conversations' turns (exactly).
    micro_batch_size: examples a forward pass takes (the gradients of a step's batch accumulate over them); 1
        leaves no padding, so the attention runs its causal kernel instead of a masked one (half the time here).
    """

    image_size: int = 108
    num_layers: int = 8
    train_records: int = 6000
    test_records: int = 300
    turns: int = 12
    test_turns: int = 3
    max_images: int = 4
    steps: int = 1800
    batch_size: int = 6
    learning_rate: float = 1.5e-3
    micro_batch_size: int = 1

    def __post_init__(self):
        super().__post_init__()
        for name in ("test_turns", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")

    def world(self, split: str = "test") -> World2Config:
        """The generator of `split`: training records ask up to `turns` questions, test records `test_turns`."""
        train = split == "train"
        return World2Config(image_size=self.image_size, object_size=self.object_size, max_images=self.max_images,
                            turns=self.turns if train else self.test_turns, turns_at_most=train, seed=self.seed)


def make_world2_base_data(data_dir: str | Path, config: World2BaseConfig):
    """The processor (world 2's words) and `{"train": (json, folder), "test": (json, folder)}`."""
    data_dir = Path(data_dir)
    processor = build_processor(image_size=config.image_size, patch_size=config.patch_size, words=tuple(vocabulary()))
    paths = {}
    for split, n in (("train", config.train_records), ("test", config.test_records)):
        written = make_world2_dataset(data_dir / split, {split: n}, config.world(split))
        paths[split] = (written[split], data_dir / split)
    return processor, paths


# ---------------------------------------------------------------------------------------------------- targets


def naming_word(turn: dict) -> str | None:
    """The word of a question that names what it asks about: its colour, or its cell ("... in the north?")."""
    words = turn["question"].rstrip("?.").split()
    if turn["task"] == "list":
        return None
    colours = [w for w in words if w in COLOURS]
    return colours[0] if colours else words[-1]


def named(turn: dict, word: str, scenes: list[list[dict]]) -> list[tuple[int, dict]]:
    """(image, object) pairs the naming word refers to."""
    key = "position" if word in POSITIONS else "colour"
    return [(i, o) for i, scene in enumerate(scenes) for o in scene if o[key] == word]


def layout_target(pairs: list[tuple[int, dict]]) -> torch.Tensor:
    """[sum(LAYOUT_TARGET)]: cells (0/1), count, images (0/1), images holding one, per-image counts (class indices for
    the cross-entropy parts; see `layout_loss`). The count's classes end at "LAYOUT[1] - 1 or more" (a colour can
    name up to 20 objects over four images; 6,000 records hold such a prompt), the per-image counts' at "3 or more"."""
    cells, images, per_image = torch.zeros(len(POSITIONS)), torch.zeros(MAX_IMAGES), torch.zeros(MAX_IMAGES)
    for i, o in pairs:
        cells[POSITIONS.index(o["position"])] = 1
        images[i] = 1
        per_image[i] += 1
    count = torch.tensor([float(min(len(pairs), LAYOUT[1] - 1))])
    return torch.cat([cells, count, images, images.sum()[None], per_image.clamp(max=3)])


def layout_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [R, sum(LAYOUT)] against `layout_target` rows [R, sum(LAYOUT_TARGET)]."""
    cells, count, images, holders, per_image = logits.split(LAYOUT, dim=-1)
    t_cells, t_count, t_images, t_holders, t_per = target.split(LAYOUT_TARGET, dim=-1)
    return (F.binary_cross_entropy_with_logits(cells, t_cells) + F.cross_entropy(count, t_count[:, 0].long())
            + F.binary_cross_entropy_with_logits(images, t_images) + F.cross_entropy(holders, t_holders[:, 0].long())
            + F.cross_entropy(per_image.reshape(-1, 4), t_per.reshape(-1).long()))


def turn_targets(record: dict, input_ids: torch.Tensor, labels: torch.Tensor, tokenizer, image_token_id: int,
                 image_size: int, patch_size: int) -> tuple[list, list]:
    """-> (grounding, naming): grounding rows `(row, keys)` (keys: the prompt positions the row's head-0 attention
    should spread over) and naming rows `(row, answer_rows, answer_word, layout)` for the questions with a
    naming word."""
    vision = (input_ids == image_token_id).nonzero()[:, 0]
    tokens = (image_size // patch_size) ** 2
    spans = answer_spans(labels)
    if len(spans) != len(record["qa"]):
        raise ValueError(f"record {record['id']}: {len(spans)} answer spans for {len(record['qa'])} turns")

    def keys_of(pairs):
        patches = [i * tokens + p for i, o in pairs for p in object_patches(o, image_size, patch_size).tolist()]
        return vision[torch.tensor(patches, dtype=torch.long)].tolist() if patches else [0]

    ids = tokenizer.convert_tokens_to_ids
    colour_ids, cell_ids = set(ids(list(COLOURS))), set(ids(list(POSITIONS)))
    grounding, naming, start = [], [], 0
    for turn, span in zip(record["qa"], spans):
        word = naming_word(turn)
        if word is not None:
            row = next(t for t in range(start, span[0] + 1) if int(input_ids[t]) == ids(word))
            pairs = named(turn, word, record["scenes"])
            grounding.append((row, keys_of(pairs)))
            naming.append((row, span, ids(turn["answer"].split()[-1]), layout_target(pairs)))
        else:  # a list: each item's object, in the answer's order, then nothing
            items = sorted(((0, o) for o in record["scenes"][0]), key=lambda p: POSITIONS.index(p[1]["position"]))
            item = 0
            for t in span:  # t predicts input_ids[t + 1]
                following = int(input_ids[t + 1])
                if following in colour_ids or following in cell_ids:
                    grounding.append((t, keys_of(items[item : item + 1])))
                if int(input_ids[t]) in cell_ids:  # the cell word ends an item: the next one, or the end
                    item += 1
                    grounding.append((t, keys_of(items[item : item + 1])))
        start = span[-1] + 1
    return grounding, naming


class World2TrainingSet(torch.utils.data.Dataset):
    """The encoded training records of a world-2 split with their per-image patch labels and turn targets."""

    def __init__(self, split: tuple, processor, image_token_id: int):
        records, dataset, size, patch = encoded_split(split, processor)
        self.examples = []
        for record, example in zip(records, dataset):
            ids, labels = torch.as_tensor(example["input_ids"]), torch.as_tensor(example["labels"])
            self.examples.append({
                **example,
                "patch_labels": torch.stack([patch_labels(scene, size, patch) for scene in record["scenes"]]),
                "targets": turn_targets(record, ids, labels, processor.tokenizer, image_token_id, size, patch)})
        self.collator = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="right")
        convert = processor.tokenizer.convert_tokens_to_ids
        self.words = [torch.tensor(convert(list(w))) for w in (COLOURS, POSITIONS, ORDINALS)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    def vision_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image [n, 3, H, W] and its patch labels [n, 2, V], for the vision tower's stage."""
        pixels = torch.cat([torch.as_tensor(e["pixel_values"]) for e in self.examples])
        return pixels, torch.cat([e["patch_labels"] for e in self.examples])

    def collate(self, examples: list[dict]) -> dict:
        """The collator's batch plus `on_object` [I, V] and `alignment_words` [I, V, 3] over the batch's I images
        (colour, cell, image ordinal), `grounding_rows` [G, 2] / `grounding_targets` [G, N], and per naming row
        (R): `naming_rows` [R, 2], `answer_words` [R], `layout` [R, sum(LAYOUT_TARGET)]; per answer position of
        those turns (S): `copy_rows` [S, 2], `copy_keys` [S]."""
        batch = self.collator([{k: e[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
                               for e in examples])
        labels = torch.cat([e["patch_labels"] for e in examples])  # [I, 2, V]
        ordinal = torch.cat([torch.arange(len(e["patch_labels"])) for e in examples])  # [I]
        colours, cells, ordinals = self.words
        batch["on_object"] = labels[:, 0] > 0
        batch["alignment_words"] = torch.stack([colours[(labels[:, 0] - 1).clamp_min(0)],
                                                cells[(labels[:, 1] - 1).clamp_min(0)],
                                                ordinals[ordinal][:, None].expand_as(labels[:, 0])], dim=-1)
        length = batch["input_ids"].shape[1]
        rows, targets, naming, words, layouts, copy_rows, copy_keys = [], [], [], [], [], [], []
        for b, example in enumerate(examples):
            grounding, named_rows = example["targets"]
            for row, keys in grounding:
                rows.append((b, row))
                targets.append(torch.zeros(length).index_fill_(0, torch.tensor(keys), 1.0 / len(keys)))
            for row, answer_rows, word, layout in named_rows:
                naming.append((b, row))
                words.append(word)
                layouts.append(layout)
                copy_rows += [(b, t) for t in answer_rows]
                copy_keys += [row] * len(answer_rows)
        batch["grounding_rows"], batch["grounding_targets"] = torch.tensor(rows), torch.stack(targets)
        batch["naming_rows"], batch["answer_words"] = torch.tensor(naming).view(-1, 2), torch.tensor(words)
        batch["layout"] = torch.stack(layouts) if layouts else torch.zeros(0, sum(LAYOUT_TARGET))
        batch["copy_rows"], batch["copy_keys"] = torch.tensor(copy_rows).view(-1, 2), torch.tensor(copy_keys)
        return batch


# ---------------------------------------------------------------------------------------------------- training


def world2_loss(model, probes, batch: dict, config: World2BaseConfig, layout_head: torch.nn.Module):
    """Answer cross-entropy plus the weighted auxiliary terms; -> (loss, {name: float})."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], labels=batch["labels"])
    grounding_probe, copy_probe = probes
    vision, naming = batch["input_ids"] == model.config.image_token_id, batch["naming_rows"]
    terms = {
        "grounding": lambda: grounding_probe.attention_loss(batch["grounding_rows"], batch["grounding_targets"]),
        "alignment": lambda: grounding_probe.alignment_loss(vision, batch["alignment_words"], batch["on_object"]),
        "early_answer": lambda: F.cross_entropy(out.logits[naming[:, 0], naming[:, 1]], batch["answer_words"]),
        "copy": lambda: copy_probe.copy_loss(batch["copy_rows"], batch["copy_keys"]),
        "cells": lambda: layout_loss(layout_head(copy_probe.captured["hidden"][naming[:, 0], naming[:, 1]]),
                                     batch["layout"]),
    }
    # a batch without a naming word (lists only) has nothing for the terms read at one
    return weighted_sum(out.loss, terms, config, skip=("early_answer", "copy", "cells") if len(naming) == 0 else ())


def train_world2_base(out_dir: str | Path, config: World2BaseConfig | None = None, *,
                      data_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train the second base from scratch and save it with its report (seconds, per-task accuracy of the test
    conversations with and without their images) to `out_dir`; returns the report."""
    from lvprune.bench.conversations import evaluate_conversations

    config = config or World2BaseConfig()
    out_dir = Path(out_dir)
    print(f"world 2: writing {config.train_records} + {config.test_records} records ...", flush=True)
    processor, paths = make_world2_base_data(data_dir if data_dir is not None else out_dir / "data", config)
    model = build_reference_model(config, processor)
    print(f"world 2: encoding {config.train_records} training records with their patch labels and turn targets "
          "(a few minutes) ...", flush=True)
    data = World2TrainingSet(paths["train"], processor, model.config.image_token_id)
    start = time.perf_counter()
    vision = pretrain_vision_tower(model.model.vision_tower, *data.vision_inputs(), steps=config.vision_steps,
                                   batch_size=config.vision_batch_size, learning_rate=config.vision_learning_rate,
                                   seed=config.seed, progress=progress)
    middle = time.perf_counter()
    history = train_language_side(model, data, config, progress, loss_fn=world2_loss, head_outputs=sum(LAYOUT),
                                  micro_batch_size=config.micro_batch_size)
    end = time.perf_counter()
    model.eval()
    report = {"config": asdict(config), "vision_seconds": round(middle - start, 1),
              "language_seconds": round(end - middle, 1), "train_steps": len(history), "vision_steps": len(vision),
              "final_loss": history[-1], "threads": torch.get_num_threads()}
    for blank in (False, True):
        scores = evaluate_conversations(model, processor, *paths["test"], blank=blank, progress=progress)
        scores.pop("predictions")
        report["blank" if blank else "seen"] = scores
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "reference_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# ---------------------------------------------------------------------------------------------------- command line

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "reference-base-v2"
TRAIN_COMMAND = "python -m lvprune_shapes.reference.world2 --out DIR"


def shipped_world2_base(folder: str | Path = SHIPPED_DIR) -> Path:
    """`folder` (the shipped second base) checked against its SHA256SUMS; refuses a missing or damaged one with
    the command that trains one (it is not rebuilt on the fly: about 100 minutes on 2 CPU cores)."""
    from lvprune_shapes.reference.cache import CHECKSUMS, verify_checksums

    folder = Path(folder)
    if not (folder / CHECKSUMS).is_file():
        raise FileNotFoundError(f"{folder}: the second reference base is not there. Train it with `{TRAIN_COMMAND}` "
                                "(about 100 minutes on 2 CPU cores) and pass the folder as the base.")
    damaged = verify_checksums(folder)
    if damaged:
        raise ValueError(f"{folder}: {', '.join(damaged)} do not match its {CHECKSUMS}; restore the files "
                         f"(git checkout -- {folder}) or train the base again with `{TRAIN_COMMAND}`.")
    return folder


@dataclass
class World2BaseCommand:
    """`python -m lvprune_shapes.reference.world2 --out DIR`: train the second base (`World2BaseConfig`'s recipe by
    default) and write it, its report and its checksums to DIR."""

    out: str | None = doc(None, "the base's folder (required); its data go beside it, in <out>-data")
    steps: int = doc(World2BaseConfig.steps, "language-model steps")
    batch_size: int = doc(World2BaseConfig.batch_size, "examples a step (run one at a time: micro_batch_size)")
    learning_rate: float = doc(World2BaseConfig.learning_rate, "peak learning rate of the language model and "
                               "projector")
    train_records: int = doc(World2BaseConfig.train_records, "training records (up to 12 questions about 1-4 "
                             "images)")
    test_records: int = doc(World2BaseConfig.test_records, "test conversations the report scores")
    seed: int = doc(0, "seed of the data and the weights")


def main(argv=None) -> None:
    import dataclasses

    from lvprune_shapes.reference.cache import write_checksums

    args = parse(World2BaseCommand, argv, prog="python -m lvprune_shapes.reference.world2")
    if args.out is None:
        raise SystemExit("python -m lvprune_shapes.reference.world2: --out DIR is required")
    config = World2BaseConfig(**{k: v for k, v in dataclasses.asdict(args).items() if k != "out"})
    out = Path(args.out)
    report = train_world2_base(out, config, data_dir=out.parent / f"{out.name}-data")
    write_checksums(out)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
