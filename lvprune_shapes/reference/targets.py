"""What the reference base is taught besides the answers: per-patch labels and per-turn grounding targets.

- `patch_labels`: for the vision tower's stage 1, the colour and the grid cell of the object under each
  patch.
- `grounding_rows`: for each turn of a record, the position of the word that names the object(s) (a colour
  or a cell) and the attention distribution it should have over the prompt: spread evenly over the named
  objects' patches, or all on the `<s>` token (a sink that says "nothing here") when nothing is named.
  A per-patch target is one attention can meet exactly (query "red" against keys that look red), so it
  can be met sharply; an even share per *object* would need the model to know each object's size.
  Each turn also carries the positions that predict its answer, the answer's key word, and the cells of
  the named objects (a count is the size of that set).
"""

from __future__ import annotations

import numpy as np
import torch

from lvprune_shapes.dataset import BACKGROUND, COLOURS, POSITIONS, draw_scene

COLOUR_NAMES = tuple(COLOURS)


def object_patches(obj: dict, image_size: int, patch_size: int) -> np.ndarray:
    """Row-major indices of the patches that `obj` covers for a quarter of their pixels or more."""
    grid = image_size // patch_size
    pixels = (np.asarray(draw_scene([obj], image_size)) != np.asarray(BACKGROUND, dtype=np.uint8)).any(-1)
    covered = pixels.reshape(grid, patch_size, grid, patch_size).sum(axis=(1, 3)).reshape(-1)
    return np.nonzero(covered >= patch_size * patch_size / 4)[0]


def patch_labels(objects: list[dict], image_size: int, patch_size: int) -> torch.Tensor:
    """[2, V] long: per patch, 1 + colour index and 1 + cell index of the object under it; 0 on background."""
    labels = torch.zeros(2, (image_size // patch_size) ** 2, dtype=torch.long)
    for obj in objects:
        patches = torch.from_numpy(object_patches(obj, image_size, patch_size))
        labels[0, patches] = 1 + COLOUR_NAMES.index(obj["colour"])
        labels[1, patches] = 1 + POSITIONS.index(obj["position"])
    return labels


def named_objects(turn: dict, objects: list[dict]) -> tuple[str, list[int]]:
    """The word that names the object(s) of a turn and the indices of the objects it names."""
    words = turn["question"].rstrip("?").split()
    if turn["type"] == "colour":  # "What colour is the object in the <cell>?"
        return words[-1], [i for i, o in enumerate(objects) if o["position"] == words[-1]]
    colour = next(w for w in words if w in COLOURS)
    return colour, [i for i, o in enumerate(objects) if o["colour"] == colour]


def answer_spans(labels: torch.Tensor) -> list[list[int]]:
    """Positions t whose next token is supervised (`labels[t + 1] != -100`), grouped in contiguous turns."""
    spans, previous = [], -2
    for t in (labels[1:] != -100).nonzero()[:, 0].tolist():
        if t != previous + 1:
            spans.append([])
        spans[-1].append(t)
        previous = t
    return spans


def grounding_rows(record: dict, input_ids: torch.Tensor, labels: torch.Tensor, tokenizer, image_token_id: int,
                   image_size: int, patch_size: int) -> list[tuple]:
    """One `(row, keys, weights, answer_rows, answer_word, cells)` per turn: the naming word's position, its
    target attention over `keys`, the positions that predict the turn's answer tokens, the id of the answer's
    key word (its last word: "red", "yes", "two", "northwest"), and the grid cells (indices into `POSITIONS`)
    of the named objects."""
    vision = (input_ids == image_token_id).nonzero()[:, 0]
    spans = answer_spans(labels)
    if len(spans) != len(record["qa"]):
        raise ValueError(f"record {record['id']}: {len(spans)} answer spans for {len(record['qa'])} turns")
    rows, start = [], 0
    for turn, span in zip(record["qa"], spans):
        word, named = named_objects(turn, record["objects"])
        word_id = tokenizer.convert_tokens_to_ids(word)
        row = next(t for t in range(start, span[0] + 1) if int(input_ids[t]) == word_id)
        patches = [p for i in named for p in object_patches(record["objects"][i], image_size, patch_size).tolist()]
        keys = vision[torch.tensor(patches, dtype=torch.long)].tolist() if patches else [0]
        weights = [1.0 / len(keys)] * len(keys)
        answer_word = tokenizer.convert_tokens_to_ids(turn["answer"].split()[-1])
        cells = sorted(POSITIONS.index(record["objects"][i]["position"]) for i in named)
        rows.append((row, keys, weights, span, answer_word, cells))
        start = span[-1] + 1
    return rows
