"""The LLaVA-format training loader: records -> `input_ids`, `attention_mask`, `pixel_values`, `labels`.

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

from .records import IMAGE_TAG, LoadStats, NoRecords, Unreadable, normalize_record, read_records, record_problem

IGNORE_INDEX = -100
RECORD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Value("string")),
        "conversations": datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")}),
    }
)


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


def encode_record(record: dict, image_folder: str | Path, processor: ProcessorMixin) -> dict:
    """One normalised record -> tensors.

    Returns `input_ids`, `attention_mask`, `labels` (each [seq], int64) and `pixel_values`
    ([n_images, 3, H, W], float32; n_images may be 0).
    """
    images = [load_image(os.path.join(image_folder, p), record["id"]) for p in record["images"]]
    # Python lists back from the processor: its tensor path costs ~5x more time per example.
    out = processor.apply_chat_template(
        to_messages(record["conversations"], images),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors=None,
    )
    input_ids = torch.tensor(out["input_ids"][0], dtype=torch.long)
    labels = input_ids.masked_fill(torch.tensor(out["assistant_masks"][0]) == 0, IGNORE_INDEX)
    if images:
        pixel_values = torch.from_numpy(np.stack(out["pixel_values"])).float()
    else:
        pixel_values = empty_pixel_values(processor)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.tensor(out["attention_mask"][0], dtype=torch.long),
        "pixel_values": pixel_values,
        "labels": labels,
    }


def empty_pixel_values(processor: ProcessorMixin) -> torch.Tensor:
    """[0, 3, H, W] at the processor's crop size: what a text-only example carries."""
    crop = processor.image_processor.crop_size
    return torch.zeros(0, 3, crop["height"], crop["width"])


def image_seq_length(processor: ProcessorMixin) -> int:
    """Placeholder tokens the processor inserts per image, measured on a blank image."""
    crop = processor.image_processor.crop_size
    blank = Image.new("RGB", (crop["width"], crop["height"]))
    ids = processor(text=IMAGE_TAG, images=[blank], add_special_tokens=False)["input_ids"][0]
    return len(ids)


def prompt_length(record: dict, processor: ProcessorMixin, per_image: int) -> int:
    """Tokens of the encoded record, counted without loading its images."""
    text = processor.apply_chat_template(to_messages(record["conversations"]), tokenize=False)
    n_tags = text.count(IMAGE_TAG)
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


def skip_reason(record: dict, image_folder, processor, options: LoaderOptions, per_image: int):
    """(reason, detail) to leave a normalised record out (reason a `SKIP_REASONS` entry), or None to keep it."""
    problem = record_problem(record, image_folder, verify_images=options.verify_images)
    if problem is not None and problem[0] == "no_image" and not options.drop_text_only:
        problem = None
    if problem is None and options.max_length is not None:
        length = prompt_length(record, processor, per_image)
        if length > options.max_length:
            problem = ("too_long", f"{length} tokens > max_length {options.max_length}")
    return problem


def iter_valid_records(json_path, image_folder, processor, stats: LoadStats, options: LoaderOptions):
    """Yield the normalised records to keep, counting the others in `stats`.

    The counts restart with every pass, so a streaming dataset's stats describe its latest pass.
    """
    stats.kept = 0
    stats.skipped.clear()
    per_image = image_seq_length(processor) if options.max_length is not None else 0
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
) -> tuple[datasets.Dataset | datasets.IterableDataset, LoadStats]:
    """Load a LLaVA instruction file (`.json` list or `.jsonl`) for training.

    Args:
        json_path: the records; `image` paths in them are relative to `image_folder`.
        processor: a `LlavaProcessor` whose chat template marks assistant turns with
            `{% generation %}` (as `build_processor()`'s does).
        streaming: return an `IterableDataset` that reads, checks and encodes lazily.
        drop_text_only: leave out records without an image (counted as `no_image`).
        max_length: leave out records longer than this many tokens (`too_long`), instead of
            truncating through their image tokens or answers.
        verify_images: decode each image fully while checking (catches truncated and corrupt files and
            decompression bombs; each such record is skipped and named in the log).

    Returns:
        `(dataset, stats)`. Each example is a dict of `input_ids`, `attention_mask`, `labels` ([seq])
        and `pixel_values` ([n_images, 3, H, W]); batch them with `LlavaCollator`.

    Raises:
        NoRecords: (map-style) every record was skipped; the message holds the counts per reason.
    """
    options = LoaderOptions(drop_text_only, max_length, verify_images)
    stats = LoadStats()
    records = functools.partial(iter_valid_records, json_path, image_folder, processor, stats, options)
    encode = functools.partial(encode_record, image_folder=image_folder, processor=processor)
    if streaming:
        source = datasets.IterableDataset.from_generator(records, features=RECORD_FEATURES)
        return source.map(encode, remove_columns=list(RECORD_FEATURES)), stats
    kept = list(records())
    if not kept:
        raise NoRecords(f"{json_path}: no record to train on: {stats.summary()}. Check image_folder (image paths "
                         "are relative to it) and the record format (LLaVA: conversations of human/gpt turns, "
                         "`<image>` in a human turn).")
    table = datasets.Dataset.from_list(kept, features=RECORD_FEATURES)
    return table.with_transform(functools.partial(_encode_batch, encode=encode)), stats


def _encode_batch(batch: dict, encode) -> dict:
    """`with_transform` hook: a batch of records (dict of lists) -> a dict of lists of tensors."""
    encoded = [encode(dict(zip(batch, values))) for values in zip(*batch.values())]
    return {key: [e[key] for e in encoded] for key in ("input_ids", "attention_mask", "pixel_values", "labels")}
