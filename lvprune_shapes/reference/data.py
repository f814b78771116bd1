"""The reference base's data: the shapes splits on disk and the encoded training set with its targets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lvprune.data import LlavaCollator, load_llava_dataset
from lvprune_shapes.dataset import POSITIONS, ShapesConfig, make_shapes_dataset
from lvprune_shapes.processor import build_processor
from lvprune_shapes.reference.config import ReferenceConfig
from lvprune_shapes.reference.targets import COLOUR_NAMES, grounding_rows, patch_labels


def make_reference_data(data_dir: str | Path, config: ReferenceConfig):
    """Write the training split (`config.turns` questions per image) and the single-question test split.

    Returns the processor and `{"train": (json, image_folder), "test": (json, image_folder)}`. The test
    split is the shapes generator's test split for `config.seed` and `config.test_records`.
    """
    data_dir = Path(data_dir)
    processor = build_processor(image_size=config.image_size, patch_size=config.patch_size)
    shapes = ShapesConfig(image_size=config.image_size, object_size=config.object_size, seed=config.seed)
    train = make_shapes_dataset(data_dir / "train", {"train": config.train_records},
                                dataclasses.replace(shapes, turns=config.turns))
    test = make_shapes_dataset(data_dir / "test", {"test": config.test_records}, shapes)
    return processor, {"train": (train["train"], data_dir / "train"), "test": (test["test"], data_dir / "test")}


def encoded_split(split: tuple, processor) -> tuple[list, object, int, int]:
    """(records, the loader's encoded dataset, image size, patch size) of a `(json, image folder)` split of a
    reference world, whose every record must load."""
    json_path, image_folder = split
    dataset, stats = load_llava_dataset(json_path, image_folder, processor)
    records = json.loads(Path(json_path).read_text())
    if stats.kept != len(records):
        raise ValueError(f"{json_path}: {stats.summary()}; every record of a reference world should load.")
    return records, dataset, processor.image_processor.crop_size["height"], processor.patch_size


class ShapesTrainingSet(torch.utils.data.Dataset):
    """The encoded training records of a shapes split, each with `patch_labels` [2, V] and `grounding` rows.

    Everything is encoded once up front (a few thousand small records), so batches cost no decoding.
    """

    def __init__(self, split: tuple, processor, image_token_id: int):
        records, dataset, size, patch = encoded_split(split, processor)
        self.records, self.examples = records, []
        for record, example in zip(records, dataset):
            ids, labels = torch.as_tensor(example["input_ids"]), torch.as_tensor(example["labels"])
            self.examples.append({**example, "patch_labels": patch_labels(record["objects"], size, patch),
                                  "grounding": grounding_rows(record, ids, labels, processor.tokenizer,
                                                              image_token_id, size, patch)})
        self.collator = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="right")
        # token ids of the colour words, then the cell words: what patch label k - 1 names
        self.colour_words, self.cell_words = (torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(words)))
                                              for words in (COLOUR_NAMES, POSITIONS))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    def vision_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image [n, 3, H, W] and its patch labels [n, 2, V], for the vision tower's stage."""
        pixels = torch.stack([torch.as_tensor(e["pixel_values"])[0] for e in self.examples])
        return pixels, torch.stack([e["patch_labels"] for e in self.examples])

    def collate(self, examples: list[dict]) -> dict:
        """The collator's batch plus, per patch, `on_object` [B, V] and `alignment_words` [B, V, 2] (its object's
        colour and cell word ids); per turn (R in all): `grounding_rows` [R, 2]
        (sample, naming word's position), `grounding_targets` [R, N] (rows sum to 1), `answer_words` [R] and
        `named_cells` [R, 9] (1 on the cells of the named objects);
        and per answer position (S in all): `copy_rows` [S, 2] (sample, position) and `copy_keys` [S]
        (the naming word's position of that turn)."""
        batch = self.collator([{k: e[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
                               for e in examples])
        labels = torch.stack([e["patch_labels"] for e in examples])
        batch["on_object"] = labels[:, 0] > 0
        batch["alignment_words"] = torch.stack([self.colour_words[(labels[:, 0] - 1).clamp_min(0)],
                                                self.cell_words[(labels[:, 1] - 1).clamp_min(0)]], dim=-1)
        length, rows, targets, words, cells, copy_rows, copy_keys = batch["input_ids"].shape[1], [], [], [], [], [], []
        for b, example in enumerate(examples):
            for row, keys, weights, answer_rows, word, cell_list in example["grounding"]:
                rows.append((b, row))
                targets.append(torch.zeros(length).index_put_((torch.tensor(keys),), torch.tensor(weights),
                                                              accumulate=True))
                words.append(word)
                cells.append(torch.zeros(len(POSITIONS)).index_fill_(0, torch.tensor(cell_list, dtype=torch.long), 1.0))
                copy_rows += [(b, t) for t in answer_rows]
                copy_keys += [row] * len(answer_rows)
        batch["grounding_rows"], batch["grounding_targets"] = torch.tensor(rows), torch.stack(targets)
        batch["answer_words"], batch["named_cells"] = torch.tensor(words), torch.stack(cells)
        batch["copy_rows"], batch["copy_keys"] = torch.tensor(copy_rows), torch.tensor(copy_keys)
        return batch
