"""The data check, paid once per version of the data: every record of a LLaVA file read, normalised and checked
(images decoded, lengths counted) by a pool of processes (`datasets.Dataset.map` with `num_proc`), and
what it decided kept on disk under a key of everything that decides it:

- the data file (its resolved path, size and modification time: an edited file is checked again),
- the image folder (resolved path), the loader's options (`LoaderOptions`),
- the processor (its tokenizer, chat template and image settings), when lengths are counted (`max_length`).

    records, stats = checked_records("train.json", "images/", processor, LoaderOptions(), num_proc=8)

A second run, a resume, or another process of the same job (`accelerator.main_process_first()`) reads the cached
result in seconds; its skipped records are named again exactly as the first run named them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import datasets

from lvprune.data.records import RECORD_FEATURES, LoadStats, Unreadable, normalize_record, read_records
from lvprune.utils.atomic_files import write_folder

CHECK_VERSION = 1  # bump when a change to the checks can change what they decide
KEPT, SKIPPED = "kept", "skipped.jsonl"
RAW_FEATURES = datasets.Features({
    **RECORD_FEATURES,
    "reason": datasets.Value("string"),  # "" to keep, else a SKIP_REASONS entry
    "detail": datasets.Value("string"),
})


def default_cache_dir() -> Path:
    """Where checks are kept by default: beside datasets' own cache (`HF_DATASETS_CACHE`)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "lvprune-checks"


def check_key(json_path, image_folder, processor, options) -> str:
    """A digest of everything that decides which records are kept."""
    stat = Path(json_path).stat()
    parts = {
        "version": CHECK_VERSION,
        "data": [str(Path(json_path).resolve()), stat.st_size, stat.st_mtime_ns],
        "images": str(Path(image_folder).resolve()),
        "options": asdict(options),
        "processor": processor_fingerprint(processor) if options.max_length is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def processor_fingerprint(processor) -> str:
    """A digest of what a processor's token counts depend on: its tokenizer, chat template and image settings."""
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             str(getattr(processor, "chat_template", None)),
             processor.image_processor.to_json_string()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def checked_records(json_path, image_folder, processor, options, *, num_proc: int | None = None,
                    cache_dir=None, log=print) -> tuple[datasets.Dataset, LoadStats]:
    """The records of `json_path` to keep (normalised) and their `LoadStats`; `log` says whether the check ran or
    was reused.

    num_proc: processes checking records (None: the cores this process may use); cache_dir: where checks are
    kept (None: `default_cache_dir()`); log: where the one line saying what this step does goes.
    """
    folder = Path(cache_dir or default_cache_dir()) / check_key(json_path, image_folder, processor, options)
    if not (folder / SKIPPED).is_file():
        num_proc = num_proc or len(os.sched_getaffinity(0))
        log(f"data: checking the records of {json_path} with {num_proc} processes (once per version of the data; "
            f"kept in {folder})")
        start = time.perf_counter()
        write_folder(folder, lambda staging: _check(json_path, image_folder, processor, options, num_proc, staging))
        log(f"data: checked in {time.perf_counter() - start:.1f} s")
    else:
        log(f"data: reusing the check of {json_path} kept in {folder}")
    kept = datasets.load_from_disk(str(folder / KEPT)) if (folder / KEPT).is_dir() else _empty()
    return kept, _replayed_stats(folder, kept.num_rows)


def _check(json_path, image_folder, processor, options, num_proc: int, folder: Path) -> None:
    """Check every record in parallel; save the kept ones (`KEPT`) and the skipped ones in file order
    (`SKIPPED`: reason, id, detail)."""
    from lvprune.data.llava_format import check_batch

    table = _table(list(_raw_rows(json_path)), RAW_FEATURES)
    num_proc = min(num_proc, len(table))
    checked = table.map(check_batch, batched=True, batch_size=64, num_proc=num_proc if num_proc > 1 else None,
                        fn_kwargs=dict(image_folder=str(image_folder), processor=processor, options=options),
                        desc="checking records")
    reasons = checked["reason"]
    keep = [i for i, reason in enumerate(reasons) if not reason]
    if keep:  # datasets cannot load a saved empty dataset back: none is saved
        checked.select(keep).remove_columns(["reason", "detail"]).flatten_indices().save_to_disk(str(folder / KEPT))
    skipped = checked.select([i for i, reason in enumerate(reasons) if reason]).select_columns(["reason", "id", "detail"])
    with open(folder / SKIPPED, "w") as f:
        for row in skipped:
            f.write(json.dumps(row) + "\n")


def _raw_rows(json_path: str):
    """Rows of `RAW_FEATURES`: a normalised record, or a placeholder that carries why it cannot be one."""
    for index, raw in enumerate(read_records(json_path)):
        if isinstance(raw, Unreadable):
            yield _placeholder(raw.where, "unreadable_line", raw.why)
        elif (record := normalize_record(raw, index)) is None:
            yield _placeholder(str(raw.get("id", index)) if isinstance(raw, dict) else str(index), "malformed", "")
        else:
            yield {**record, "reason": "", "detail": ""}


def _table(rows: list[dict], features: datasets.Features) -> datasets.Dataset:
    """An in-memory table of `rows` (none: an empty one that still has the columns)."""
    return datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in features}, features=features)


def _empty() -> datasets.Dataset:
    return _table([], RECORD_FEATURES)


def _placeholder(record_id: str, reason: str, detail: str) -> dict:
    return {"id": record_id, "images": [], "conversations": [], "reason": reason, "detail": detail}


def _replayed_stats(folder: Path, kept: int) -> LoadStats:
    """The check's `LoadStats`, each skipped record counted and logged again as the check first did."""
    stats = LoadStats(kept=kept)
    with open(folder / SKIPPED) as f:
        for line in f:
            row = json.loads(line)
            stats.skip(row["reason"], row["id"], row["detail"])
    return stats
