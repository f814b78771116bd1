"""How the training data's cost grows: the records' check (cold: first run on a data file; warm: a second run, a
resume or another process) and the examples/s of encoding and collating, at 1k, 10k and 100k records.

    python benchmarks/data_scale.py                          # 1k, 10k, 100k records; 0, 2 and 4 workers
    python benchmarks/data_scale.py --sizes 1000 10000 --workers 0 2

Records are LLaVA-1.5 single-image questions over 640x480 JPEGs of about COCO's file size, each record its own
file name (hard links to a few distinct images keep the disk small: every record still opens and decodes its
file), through a LLaVA-1.5-shaped processor (336-px crop, 576 vision tokens per image). The check runs with
`num_proc` = the cores this process may use; the printout extrapolates it to LLaVA-1.5's 665k-record mix.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from lvprune.data import LlavaCollator, load_llava_dataset
from lvprune.utils.command_line import build_parser, doc, parse
from lvprune_shapes.processor import build_processor

LLAVA_MIX = 665_298  # records of llava_v1_5_mix665k.json
DISTINCT_IMAGES = 16


@dataclass
class ScaleConfig:
    """The sizes and worker counts measured."""

    sizes: list[int] = doc([1000, 10_000, 100_000], "records per data file")
    workers: list[int] = doc([0, 2, 4], "DataLoader worker counts for examples/s")
    examples: int = doc(256, "examples encoded and collated per worker count")
    batch_size: int = doc(8, "examples per collated batch")
    work_dir: str | None = doc(None, "where the data and the checks are written (unset: a temporary folder)")


def make_images(folder: Path, size: int) -> list[str]:
    """`size` file names, hard links to `DISTINCT_IMAGES` noisy 640x480 JPEGs (about 120 KB each, like COCO's)."""
    rng = np.random.default_rng(0)
    sources = []
    for k in range(DISTINCT_IMAGES):
        pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((640, 480), Image.BICUBIC)
        noise = rng.integers(-12, 13, (480, 640, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / f"source-{k}.jpg"
        image.save(path, quality=90)
        sources.append(path)
    names = []
    for i in range(size):
        name = f"{i:07d}.jpg"
        if not (folder / name).exists():
            os.link(sources[i % DISTINCT_IMAGES], folder / name)
        names.append(name)
    return names


def make_records(path: Path, names: list[str]) -> None:
    records = [{"id": i, "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is the colour of the largest object?"},
        {"from": "gpt", "value": "The largest object is a red square in the upper left."}]}
        for i, name in enumerate(names)]
    path.write_text(json.dumps(records))


def examples_per_second(dataset, processor, workers: int, config: ScaleConfig) -> float:
    """Examples/s through a DataLoader that encodes (image, template) and collates, after one warm-up batch."""
    subset = dataset.select(range(min(config.examples, len(dataset))))
    collator = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id)
    loader = DataLoader(subset, batch_size=config.batch_size, num_workers=workers, collate_fn=collator)
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += batch["input_ids"].shape[0]
    return seen / (time.perf_counter() - start)


def measure(size: int, root: Path, images: Path, processor, config: ScaleConfig) -> dict:
    data = root / f"records-{size}.json"
    make_records(data, make_images(images, size))
    cache = root / f"checks-{size}"
    lines = []
    start = time.perf_counter()
    dataset, stats = load_llava_dataset(data, images, processor, cache_dir=cache, log=lines.append)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_llava_dataset(data, images, processor, cache_dir=cache, log=lines.append)
    warm = time.perf_counter() - start
    assert stats.kept == size and "reusing the check" in lines[-1], lines
    row = {"records": size, "cold_s": cold, "warm_s": warm}
    if size == min(config.sizes):
        row["examples_per_s"] = {w: examples_per_second(dataset, processor, w, config) for w in config.workers}
    print(f"{size:>8} records: cold {cold:7.1f} s, warm {warm:5.2f} s", flush=True)
    return row


def report(rows: list[dict], cores: int) -> None:
    print(f"\n| records | cold check (s, {cores} processes) | per record (ms) | warm start (s) | warm / cold |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['records']:,} | {row['cold_s']:.1f} | {1e3 * row['cold_s'] / row['records']:.2f} | "
              f"{row['warm_s']:.2f} | {row['warm_s'] / row['cold_s']:.1%} |")
    largest = rows[-1]
    per_record = largest["cold_s"] / largest["records"]
    cold = per_record * LLAVA_MIX
    print(f"\nLLaVA-1.5 mix ({LLAVA_MIX:,} records), extrapolated from {largest['records']:,}: cold check "
          f"{cold / 60:.1f} min on {cores} processes ({cold * cores / 60:.1f} core-minutes); warm start "
          f"{largest['warm_s'] * 1e3:.0f} ms at {largest['records']:,} records")
    speeds = next(row["examples_per_s"] for row in rows if "examples_per_s" in row)
    print("\n| DataLoader workers | examples/s (encode + collate) |\n| ---: | ---: |")
    for workers, speed in speeds.items():
        print(f"| {workers} | {speed:.0f} |")


def main(argv=None) -> list[dict]:
    parser = build_parser(ScaleConfig, prog="python benchmarks/data_scale.py", description=__doc__.splitlines()[0])
    config = parse(ScaleConfig, argv, parser=parser)
    processor = build_processor(image_size=336, patch_size=14)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(config.work_dir or scratch)
        images = root / "images"
        images.mkdir(parents=True, exist_ok=True)
        rows = [measure(size, root, images, processor, config) for size in sorted(config.sizes)]
    report(rows, cores)
    return rows


if __name__ == "__main__":
    main()
