"""The LLaVA-format training loader: records -> `input_ids`, `attention_mask`, `labels` and the base's vision inputs.

    dataset, stats = load_llava_dataset("train.json", "images/", processor)            # map-style
    dataset, stats = load_llava_dataset("train.json", "images/", processor, streaming=True)

Each record's conversation becomes chat messages (every `<image>` tag, wherever it sits in a human
turn, becomes an image entry, in order), rendered and tokenized by the processor's own chat template.
`labels` hold the token ids of every gpt turn, its `</s>` included, and -100 everywhere else. Bad
records are counted in the returned `LoadStats` and skipped (see `records.py`); text-only records are
dropped as the LVPruning paper does, unless `drop_text_only=False`.

Map-style datasets check every record up front and decode images on access (`with_transform`);
streaming datasets do both lazily, so their stats fill as they are iterated (in the iterating
process: DataLoader workers keep their own copies).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from lvprune import families
from lvprune.data.check import checked_records
from lvprune.data.records import (
    IMAGE_TAG,
    RECORD_FEATURES,
    LoadStats,
    NoRecords,
    Unreadable,
    normalize_record,
    read_records,
    record_problem,
)
from lvprune.families import Backbone

IGNORE_INDEX = -100


def human_content(value: str, images: list) -> list[dict]:
    """Split a human turn at its `<image>` tags into chat-template content, in order.

    Text pieces are stripped (the template joins entries with newlines, so `"<image>\\nQ"` renders
    back unchanged); each tag takes the next item of `images` (consumed in place).
    """
    content = []
    for i, piece in enumerate(value.split(IMAGE_TAG)):
        if i > 0:
            image = images.pop(0) if images else None
            content.append({"type": "image"} if image is None else {"type": "image", "image": image})
        if piece.strip():
            content.append({"type": "text", "text": piece.strip()})
    return content


def to_messages(conversations: list[dict], images: list | None = None) -> list[dict]:
    """LLaVA `conversations` -> chat messages; `images` (PIL, in tag order) are attached if given."""
    queue = list(images or [])
    messages = []
    for turn in conversations:
        if turn["from"] == "human":
            messages.append({"role": "user", "content": human_content(turn["value"], queue)})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"]}]})
    return messages


def load_image(path: str, record_id: str = "?") -> Image.Image:
    """An RGB copy of the image at `path`, with the file closed; errors name the record and the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # the file changed since the records were checked
        raise ValueError(f"record {record_id}: image {path} cannot be decoded: {error}") from error


def encode_record(record: dict, image_folder: str | Path, processor: ProcessorMixin,
                  backbone: Backbone | None = None) -> dict:
    """One normalised record -> tensors, through the processor's own chat template.

    Returns `input_ids`, `attention_mask`, `labels` (each [seq], int64), and the family's inputs
    (`backbone.image_inputs` and `token_inputs`, default LLaVA-1.5's `pixel_values` [n_images, 3, H, W]): per-image ones as the
    processor gives them (empty, `[0, ...]`, for a record without images), per-token ones as [seq].
    """
    backbone = backbone or families.supported()["llava"]
    images = [load_image(os.path.join(image_folder, p), record["id"]) for p in record["images"]]
    # Python lists back from the processor: its tensor path costs ~5x more time per example.
    out = processor.apply_chat_template(
        to_messages(record["conversations"], images),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors=None,
    )
    input_ids = torch.as_tensor(out["input_ids"][0], dtype=torch.long)
    assistant = torch.as_tensor(out["assistant_masks"][0]) != 0
    if not assistant.any():
        raise ValueError(f"record {record['id']}: the chat template marks no assistant token. It must wrap assistant "
                         "turns in {% generation %} ... {% endgeneration %}; lvprune.training's --chat_template family "
                         "uses lvprune's copy of the family's template that does.")
    return {**model_inputs(out, processor, backbone, bool(images)), "labels": input_ids.masked_fill(~assistant, IGNORE_INDEX)}


def model_inputs(out: dict, processor: ProcessorMixin, backbone: Backbone, with_images: bool) -> dict:
    """One example's model inputs from a processor's list output (`return_tensors=None`, batch of one):
    `input_ids`, `attention_mask` [seq] and the family's per-image (empty without images) and per-token inputs."""
    example = {"input_ids": torch.as_tensor(out["input_ids"][0], dtype=torch.long),
               "attention_mask": torch.as_tensor(out["attention_mask"][0], dtype=torch.long)}
    for key in backbone.image_inputs:
        present = with_images and out.get(key) is not None
        example[key] = stack_padded(out[key]) if present else empty_input(processor, key)
    for key in backbone.token_inputs:
        example[key] = torch.as_tensor(out[key][0], dtype=torch.long)
    return example


def stack_padded(value) -> torch.Tensor:
    """A processor's per-image output as one tensor, dim 0 the images (or their rows).

    A list holds one entry per image: they are stacked, padded with zeros to the largest where sizes differ
    (LLaVA-NeXT's tile counts, Pixtral's image sizes), as the family's batched processor pads them. An array is
    already one tensor over the images' rows (Qwen2-VL's patches).
    """
    if not isinstance(value, (list, tuple)):
        return torch.as_tensor(np.asarray(value))
    return pad_cat([torch.as_tensor(np.asarray(entry))[None] for entry in value])


def pad_cat(tensors) -> torch.Tensor:
    """Concatenate along dim 0, padding every trailing dim with zeros to the largest size."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, t.dim())):
            pad += [0, shape[d - 1] - t.shape[d]]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


def empty_input(processor: ProcessorMixin, key: str) -> torch.Tensor:
    """What a record without images carries for a per-image input: `[0, 3, H, W]` pixel values at a fixed
    crop size, otherwise an empty tensor."""
    crop = getattr(processor.image_processor, "crop_size", None)
    if key == "pixel_values" and crop and "height" in crop:
        return torch.zeros(0, 3, crop["height"], crop["width"])
    return torch.zeros(0)


def image_seq_length(processor: ProcessorMixin) -> int | None:
    """Placeholder tokens the processor inserts per image when that number is fixed (LLaVA-1.5: a square
    crop), measured on a blank image; None where it depends on the image (tiles, dynamic resolution)."""
    image_processor = processor.image_processor
    crop = getattr(image_processor, "crop_size", None)
    if not crop or "height" not in crop or getattr(image_processor, "image_grid_pinpoints", None):
        return None
    blank = Image.new("RGB", (crop["width"], crop["height"]))
    ids = processor(text=processor.image_token, images=[blank], add_special_tokens=False)["input_ids"][0]
    return len(ids)


def prompt_length(record: dict, processor: ProcessorMixin, per_image: int | None, image_folder=".") -> int:
    """Tokens of the encoded record: counted without loading its images where each image's count is fixed,
    otherwise by processing them."""
    if per_image is None:
        images = [load_image(os.path.join(image_folder, p), record["id"]) for p in record["images"]]
        out = processor.apply_chat_template(to_messages(record["conversations"], images), tokenize=True,
                                            return_dict=True, return_tensors=None)
        return len(out["input_ids"][0])
    text = processor.apply_chat_template(to_messages(record["conversations"]), tokenize=False)
    n_tags = text.count(processor.image_token)
    return len(processor.tokenizer(text)["input_ids"]) + n_tags * (per_image - 1)


@dataclass(frozen=True)
class LoaderOptions:
    """What `load_llava_dataset` keeps; see its docstring."""

    drop_text_only: bool = True
    max_length: int | None = None
    verify_images: bool = True

    def __post_init__(self):
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be a positive number of tokens or None, got {self.max_length}")


def skip_reason(record: dict, image_folder, processor, options: LoaderOptions, per_image: int | None):
    """(reason, detail) to leave a normalised record out (reason a `SKIP_REASONS` entry), or None to keep it."""
    problem = record_problem(record, image_folder, verify_images=options.verify_images)
    if problem is not None and problem[0] == "no_image" and not options.drop_text_only:
        problem = None
    if problem is None and options.max_length is not None:
        length = prompt_length(record, processor, per_image, image_folder)
        if length > options.max_length:
            problem = ("too_long", f"{length} tokens > max_length {options.max_length}")
    return problem


def check_batch(batch: dict, image_folder, processor, options: LoaderOptions) -> dict:
    """`Dataset.map` hook (batched) of the data check: fills `reason` and `detail` of the records not yet refused
    ("" keeps a record)."""
    per_image = image_seq_length(processor) if options.max_length is not None else 0  # None: count each
    reasons, details = list(batch["reason"]), list(batch["detail"])
    for i, reason in enumerate(reasons):
        if not reason:
            record = {key: batch[key][i] for key in ("id", "images", "conversations")}
            reasons[i], details[i] = skip_reason(record, image_folder, processor, options, per_image) or ("", "")
    return {"reason": reasons, "detail": details}


def iter_valid_records(json_path, image_folder, processor, stats: LoadStats, options: LoaderOptions):
    """Yield the normalised records to keep, counting the others in `stats`.

    The counts restart with every pass, so a streaming dataset's stats describe its latest pass.
    """
    stats.kept = 0
    stats.skipped.clear()
    per_image = image_seq_length(processor) if options.max_length is not None else 0  # None: count each
    for index, raw in enumerate(read_records(json_path)):
        if isinstance(raw, Unreadable):
            stats.skip("unreadable_line", raw.where, raw.why)
        elif (record := normalize_record(raw, index)) is None:
            stats.skip("malformed", str(raw.get("id", index)) if isinstance(raw, dict) else str(index))
        elif problem := skip_reason(record, image_folder, processor, options, per_image):
            stats.skip(problem[0], record["id"], problem[1])
        else:
            stats.kept += 1
            yield record


def load_llava_dataset(
    json_path: str | Path,
    image_folder: str | Path,
    processor: ProcessorMixin,
    *,
    streaming: bool = False,
    drop_text_only: bool = True,
    max_length: int | None = None,
    verify_images: bool = True,
    backbone: Backbone | None = None,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
    log=print,
) -> tuple[datasets.Dataset | datasets.IterableDataset, LoadStats]:
    """Load a LLaVA instruction file (`.json` list or `.jsonl`) for training.

    Args:
        json_path: the records; `image` paths in them are relative to `image_folder`.
        processor: the base's processor (`AutoProcessor`); its chat template must mark assistant turns with
            `{% generation %}` (each backbone's `chat_template` does, as `build_processor()`'s does).
        streaming: return an `IterableDataset` that reads, checks and encodes lazily.
        drop_text_only: leave out records without an image (counted as `no_image`).
        max_length: leave out records longer than this many tokens (`too_long`), instead of
            truncating through their image tokens or answers.
        verify_images: decode each image fully while checking (catches truncated and corrupt files and
            decompression bombs; each such record is skipped and named in the log).
        num_proc, cache_dir, log: (map-style) the check's processes (None: the cores this process may use), where
            its result is kept (None: beside datasets' cache) and where its progress line goes
            (`lvprune.data.check`: a second load of the same data reuses it).

    Returns:
        `(dataset, stats)`. Each example is a dict of `input_ids`, `attention_mask`, `labels` ([seq]) and the
        family's inputs (`pixel_values` [n_images, 3, H, W] for LLaVA-1.5); batch them with
        `LlavaCollator(..., token_inputs=backbone.token_inputs)`.

    Raises:
        NoRecords: (map-style) every record was skipped; the message holds the counts per reason.
    """
    options = LoaderOptions(drop_text_only, max_length, verify_images)
    stats = LoadStats()  # streaming: filled as the records are read
    records = functools.partial(iter_valid_records, json_path, image_folder, processor, stats, options)
    encode = functools.partial(encode_record, image_folder=image_folder, processor=processor, backbone=backbone)
    if streaming:
        source = datasets.IterableDataset.from_generator(records, features=RECORD_FEATURES)
        return source.map(encode, remove_columns=list(RECORD_FEATURES)), stats
    table, stats = checked_records(json_path, image_folder, processor, options, num_proc=num_proc,
                                      cache_dir=cache_dir, log=log)
    if not len(table):
        raise NoRecords(f"{json_path}: no record to train on: {stats.summary()}. Check image_folder (image paths "
                         "are relative to it) and the record format (LLaVA: conversations of human/gpt turns, "
                         "`<image>` in a human turn).")
    return table.with_transform(functools.partial(_encode_batch, encode=encode)), stats


def _encode_batch(batch: dict, encode) -> dict:
    """`with_transform` hook: a batch of records (dict of lists) -> a dict of lists of tensors."""
    encoded = [encode(dict(zip(batch, values))) for values in zip(*batch.values())]
    return {key: [e[key] for e in encoded] for key in encoded[0]}
