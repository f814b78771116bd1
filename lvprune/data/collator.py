"""Batching LLaVA-format examples of any supported family: pad the per-token tensors, concatenate the images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvprune.data.llava_format import IGNORE_INDEX, pad_cat

PADDING_SIDES = ("right", "left")
TEXT_KEYS = ("input_ids", "attention_mask", "labels")


@dataclass(frozen=True)
class LlavaCollator:
    """Collate `load_llava_dataset` examples into one model batch.

    `input_ids` are padded with `pad_token_id`, `attention_mask` with 0, `labels` with -100 and the family's
    per-token inputs (`token_inputs`, e.g. Qwen2-VL's `mm_token_type_ids`) with 0, on `padding_side` (right for
    training, left for batched generation). Every other tensor is a per-image input (`pixel_values`,
    `image_sizes`, `image_grid_thw`, ...): the examples' are concatenated in batch order along dim 0, the layout
    the models take (their image features fill the placeholders in the same order), trailing dims padded with
    zeros where they differ (LLaVA-NeXT's tile counts). Examples may hold 0, 1 or more images; an input no
    example has is left out of the batch.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    token_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {self.pad_to_multiple_of}")

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """examples: dicts of `input_ids`, `attention_mask`, optional `labels` and per-token inputs ([seq_i]),
        and per-image inputs ([n_i, ...]). Returns [batch, max_seq] tensors and the concatenated images."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        length = self._padded_length(max(len(e["input_ids"]) for e in examples))
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key in examples[0]:
            if key in TEXT_KEYS or key in self.token_inputs:
                batch[key] = self._pad([e[key] for e in examples], length, fill.get(key, 0))
            elif (images := concat_images([e.get(key) for e in examples], key, "image_sizes" in examples[0])) \
                    is not None:
                batch[key] = images
        return batch

    def _padded_length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of or 1
        return -(-longest // multiple) * multiple

    def _pad(self, rows: list, length: int, value: int) -> torch.Tensor:
        """[batch, length] int64, each row placed on the right or the left of its padding."""
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            row = torch.as_tensor(row, dtype=torch.long)
            if self.padding_side == "right":
                out[i, : len(row)] = row
            else:
                out[i, length - len(row) :] = row
        return out


def concat_images(per_example: list, key: str = "pixel_values", sizes_known: bool = False) -> torch.Tensor | None:
    """[total, ...] from per-example [n_i, ...] (n_i may be 0); None without any entry.

    Entries of different sizes are padded with zeros (see `pad_cat`) only when the batch carries `image_sizes`,
    from which the model crops each image back; otherwise they must agree.
    """
    tensors = [torch.as_tensor(p) for p in per_example if p is not None and len(p) > 0]
    if not tensors:
        return None
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1 and (not sizes_known or len({len(shape) for shape in shapes}) > 1):
        raise ValueError(f"all images of a batch must share one {key} shape, got {sorted(shapes)}")
    return pad_cat(tensors)
