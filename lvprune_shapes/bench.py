"""The shapes benchmark: `lvprune bench` on the reference base and the shapes test split, with defaults.

    python -m lvprune_shapes.bench --out DIR [--quick true] [--base DIR] [--pruner DIR] [--cache_dir DIR]

Whatever is not given is made and cached under `cache_dir`: the reference base (the shipped one, checked
against its SHA256SUMS), the shapes test split, and a pruner trained on the base (`bench_pruner`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from lvprune.bench import BenchConfig
from lvprune.utils.command_line import doc, parse
from lvprune_shapes.bench_pruner import FULL, QUICK, bench_pruner
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.reference import reference_base

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune"


@dataclass
class ShapesBenchConfig(BenchConfig):
    """`lvprune bench`'s settings, each of base, pruner and test split defaulting to the shapes world's."""

    cache_dir: str | None = doc(None, "where the reference base, the test split and the trained pruner are cached "
                                "(default: ~/.cache/lvprune)")


def resolve(config: ShapesBenchConfig, train_pruner: bool = True) -> BenchConfig:
    """The complete `BenchConfig`: the reference base, the shapes test split and (unless `train_pruner` is False,
    for methods without one) a pruner for what is not given."""
    cache = Path(config.cache_dir or DEFAULT_CACHE_DIR).expanduser()
    base = config.base or str(reference_base(cache / "reference-base"))
    size = image_size(base)
    test_json, image_folder = config.test_json, config.image_folder
    if test_json is None:
        test_json, image_folder = (str(p) for p in shapes_test_split(cache, size, config))
    pruner = config.pruner
    if pruner is None and train_pruner:
        recipe = QUICK if config.quick else FULL
        pruner = str(bench_pruner(base, image_size=size, cache_dir=cache / "bench-pruners", seed=config.seed,
                                  **recipe))
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(BenchConfig)}
    return BenchConfig(**{**fields, "base": base, "pruner": pruner, "test_json": test_json,
                          "image_folder": image_folder})


def image_size(base) -> int:
    """The square side the base's processor crops images to."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(base).image_processor.crop_size["height"]


def shapes_test_split(cache: Path, size: int, config: BenchConfig) -> tuple[Path, Path]:
    """The shapes test split at image size `size` (the base's), generated into the cache once."""
    shapes = ShapesConfig(image_size=size, seed=config.seed)
    low, high = shapes.object_size
    records = config.resolved().test_records  # `quick` asks for fewer
    folder = cache / f"shapes-test-{size}px-objects{low:g}-{high:g}-{records}-seed{config.seed}"
    if not (folder / "test.json").is_file():
        make_shapes_dataset(folder, {"test": records}, shapes)
    return folder / "test.json", folder


def run(config: ShapesBenchConfig) -> list[dict]:
    from lvprune.bench.harness import run as run_bench

    return run_bench(resolve(config))


def main(argv=None) -> int:
    config = parse(ShapesBenchConfig, argv, prog="python -m lvprune_shapes.bench")
    if config.out is None:
        sys.exit("python -m lvprune_shapes.bench: --out DIR is required")
    run(config)
    print((Path(config.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
