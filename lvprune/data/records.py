"""LLaVA instruction records: reading, normalising, checking.

A record in the LLaVA-1.5 format is `{"id", "image"?, "conversations": [{"from": "human"|"gpt",
"value": str}, ...]}`; `"image"` is a path relative to the image folder, a list of paths, or absent
(text-only). The human turns mark where each image goes with `<image>`.

Real LLaVA files mix integer and string ids (so `datasets.load_dataset("json")` cannot infer one Arrow
schema for them), so records are read with the `json` module and normalised to one fixed schema
before `datasets` sees them: `{"id": str, "images": list[str], "conversations": list[{from, value}]}`.

Bad records are never raised on: `record_problem` names the reason, and `LoadStats` counts it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_TAG = "<image>"
# A normalised record: what the loader keeps of each one (see `normalize_record`).
RECORD_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "images": datasets.List(datasets.Value("string")),
    "conversations": datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")}),
})
ROLES = ("human", "gpt")
# ShareGPT-style names of the same roles.
ROLE_ALIASES = {"user": "human", "assistant": "gpt"}
# Why a record was left out. "no_image" is not an error: text-only entries are dropped on purpose.
SKIP_REASONS = (
    "unreadable_line",
    "malformed",
    "empty_conversation",
    "bad_roles",
    "no_image",
    "no_image_tag",
    "image_tag_mismatch",
    "missing_image_file",
    "unreadable_image",
    "too_long",
)


@dataclass
class LoadStats:
    """Counts of kept and skipped records. For a streaming dataset they grow as it is iterated.

    Only the first `max_warnings` records of each reason are logged at WARNING (later ones at DEBUG),
    so that a long run over a dirty file does not drown its log.
    """

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    max_warnings: int = 10

    def skip(self, reason: str, record_id: str, detail: str = "") -> None:
        """Count a left-out record and log why (`detail`: the file or line at fault)."""
        self.skipped[reason] += 1
        level = logging.DEBUG if reason == "no_image" or self.skipped[reason] > self.max_warnings else logging.WARNING
        logger.log(level, "skipping record %s: %s%s", record_id, reason, f" ({detail})" if detail else "")

    @property
    def total(self) -> int:
        return self.kept + sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
        return f"kept {self.kept} of {self.total} records" + (f" (skipped: {reasons})" if reasons else "")


class NoRecords(ValueError):
    """Every record of a data file was skipped: there is nothing to train on."""


@dataclass(frozen=True)
class Unreadable:
    """A `.jsonl` line that is not a JSON record: `where` names the file and line, `why` the error."""

    where: str
    why: str


def read_records(json_path: str | Path):
    """Yield the raw records of a `.json` file (one JSON list) or a `.jsonl` file (one per line).

    A `.jsonl` line that is not UTF-8 or not JSON is yielded as an `Unreadable` (skipped and counted by the
    loader); a broken `.json` list cannot be read past its error and raises a ValueError naming the place. A
    UTF-8 byte-order mark is accepted.
    """
    path = Path(json_path)
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield _parse_line(line, number == 1, f"{path}:{number}")
    else:
        try:
            records = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a readable JSON list of records: {error}") from None
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of records, got {type(records).__name__}")
        yield from records


def _parse_line(line: bytes, first: bool, where: str):
    try:
        return json.loads(line.decode("utf-8-sig" if first else "utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return Unreadable(where, str(error))


def normalize_record(raw, index: int) -> dict | None:
    """`{"id": str, "images": list[str], "conversations": list[{"from", "value"}]}`, or None if `raw`
    does not even have that shape (its turns are checked later, by `record_problem`)."""
    if not isinstance(raw, dict):
        return None
    image, turns = raw.get("image"), raw.get("conversations") or []
    images = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        return None
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return None
    conversations = [{"from": ROLE_ALIASES.get(str(t.get("from")), str(t.get("from"))), "value": t["value"]}
                     for t in turns]
    return {"id": str(raw.get("id", index)), "images": images, "conversations": conversations}


def _roles_alternate(conversations: list[dict]) -> bool:
    """human, gpt, human, gpt, ... ending on a gpt turn."""
    roles = [t["from"] for t in conversations]
    return len(roles) % 2 == 0 and all(role == ROLES[i % 2] for i, role in enumerate(roles))


def _tag_problem(record: dict) -> str | None:
    """The reason the `<image>` tags do not match the images, if they do not."""
    turns = record["conversations"]
    if any(IMAGE_TAG in t["value"] for t in turns if t["from"] == "gpt"):
        return "image_tag_mismatch"
    n_tags = sum(t["value"].count(IMAGE_TAG) for t in turns)
    if record["images"] and n_tags == 0:
        return "no_image_tag"
    return "image_tag_mismatch" if n_tags != len(record["images"]) else None


def image_problem(path: str) -> str | None:
    """Why the image at `path` cannot be decoded (truncated, corrupt, a decompression bomb), or None.

    The whole file is decoded, not only its header: a half-downloaded file has a valid header. A JPEG is decoded
    at 1/8 scale (`draft`): its whole entropy-coded stream is still read, so a truncated file fails as at full
    scale, at about half the time (the inverse DCT of every block is what the scale skips).
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        return f"{path}: {type(error).__name__}: {error}"
    return None


def _file_problem(paths: list[str], verify: bool) -> tuple[str, str] | None:
    """(reason, the file at fault) if an image file cannot be used. `verify` decodes each image fully."""
    for path in paths:
        if not os.path.isfile(path):
            return "missing_image_file", path
        problem = image_problem(path) if verify else None
        if problem is not None:
            return "unreadable_image", problem
    return None


def record_problem(record: dict, image_folder: str | Path, *, verify_images: bool = True) -> tuple[str, str] | None:
    """(reason, detail) to leave a normalised record out (reason one of `SKIP_REASONS`), or None to keep it."""
    if not record["conversations"]:
        return "empty_conversation", ""
    if not _roles_alternate(record["conversations"]):
        roles = [t["from"] for t in record["conversations"]]
        return "bad_roles", f"roles {roles[:4]}; want human/gpt (or user/assistant) alternating, ending on gpt"
    tags = _tag_problem(record)
    if not record["images"]:
        return (tags or "no_image"), ""
    if tags:
        return tags, ""
    return _file_problem([os.path.join(image_folder, p) for p in record["images"]], verify_images)
