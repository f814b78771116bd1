"""Write the synthetic shapes VQA set (LLaVA-1.5 instruction format) to a folder.

    python -m lvprune_shapes.make_shapes --out outputs/shapes --train 4000 --validation 500 --test 500 --seed 0

Writes `<out>/{train,validation,test}.json`, the PNGs under `<out>/images/<split>/` and
`<out>/shapes_config.json`. The same settings give byte-identical files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from lvprune.utils.command_line import doc, parse
from lvprune_shapes.dataset import QUESTION_TYPES, ShapesConfig, make_shapes_dataset


@dataclass
class MakeShapesConfig:
    """The splits to write and the scenes' settings (`ShapesConfig`)."""

    out: str | None = doc(None, "output folder, also the image folder for the loader (required)")
    train: int = doc(4000, "training records")
    validation: int = doc(500, "validation records")
    test: int = doc(500, "test records")
    seed: int = doc(0, "seed of the scenes and questions")
    image_size: int = doc(96, "square image side in pixels")
    min_objects: int = doc(3, "fewest objects in a scene")
    max_objects: int = doc(5, "most objects in a scene")
    max_count: int = doc(4, "largest answer of counting questions")
    turns: int = doc(1, "questions per image (multi-turn if > 1)")
    types: list[str] = doc(list(QUESTION_TYPES), f"question types, of {', '.join(QUESTION_TYPES)}")

    def shapes(self) -> ShapesConfig:
        return ShapesConfig(image_size=self.image_size, min_objects=self.min_objects, max_objects=self.max_objects,
                            max_count=self.max_count, turns=self.turns, types=tuple(self.types), seed=self.seed)


def main(argv=None) -> None:
    settings = parse(MakeShapesConfig, argv, prog="python -m lvprune_shapes.make_shapes")
    if settings.out is None:
        sys.exit("python -m lvprune_shapes.make_shapes: --out DIR is required")
    sizes = {"train": settings.train, "validation": settings.validation, "test": settings.test}
    sizes = {split: n for split, n in sizes.items() if n > 0}
    start = time.perf_counter()
    paths = make_shapes_dataset(settings.out, sizes, settings.shapes())
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        print(f"{split}: {sizes[split]} records -> {path}")
    print(f"{sum(sizes.values())} images in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
