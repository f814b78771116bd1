"""Batching LLaVA examples: pad the token tensors, concatenate the images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .llava_format import IGNORE_INDEX

PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class LlavaCollator:
    """Collate `load_llava_dataset` examples into one `LlavaForConditionalGeneration` batch.

    `input_ids` are padded with `pad_token_id`, `attention_mask` with 0 and `labels` with -100, on
    `padding_side` (right for training, left for batched generation). `pixel_values` of all examples
    are concatenated in batch order to [total_images, 3, H, W], the layout LLaVA takes (its image
    features fill the `<image>` placeholders in the same order); examples may hold 0, 1 or more
    images, and a batch without any image gets no `pixel_values` key.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {self.pad_to_multiple_of}")

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """examples: dicts of `input_ids`, `attention_mask`, optional `labels` ([seq_i]) and
        `pixel_values` ([n_images_i, 3, H, W]). Returns [batch, max_seq] tensors and pixel_values."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        length = self._padded_length(max(len(e["input_ids"]) for e in examples))
        batch = {
            "input_ids": self._pad([e["input_ids"] for e in examples], length, self.pad_token_id),
            "attention_mask": self._pad([e["attention_mask"] for e in examples], length, 0),
        }
        if "labels" in examples[0]:
            batch["labels"] = self._pad([e["labels"] for e in examples], length, IGNORE_INDEX)
        pixel_values = concat_pixel_values([e.get("pixel_values") for e in examples])
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
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


def concat_pixel_values(per_example: list) -> torch.Tensor | None:
    """[total_images, 3, H, W] from per-example [n_i, 3, H, W] (n_i may be 0); None without images."""
    tensors = [torch.as_tensor(p) for p in per_example if p is not None and len(p) > 0]
    if not tensors:
        return None
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"all images of a batch must share one [3, H, W] shape, got {sorted(shapes)}")
    return torch.cat(tensors, dim=0)
