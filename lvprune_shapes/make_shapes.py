"""Write the synthetic shapes VQA set (LLaVA-1.5 instruction format) to a folder.

    python -m lvprune_shapes.make_shapes --out outputs/shapes --train 4000 --validation 500 --test 500 --seed 0
    python -m lvprune_shapes.make_shapes --world 2 --turns 3 --out outputs/world2 ...

Writes `<out>/{train,validation,test}.json`, the PNGs under `<out>/images/<split>/` and
`<out>/shapes_config.json` (world 2: `world_config.json`). The same settings give byte-identical files. World 1
asks one short question about one image (`lvprune_shapes.dataset`); world 2 several images a prompt, long
answers and conversations (`lvprune_shapes.world2`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from lvprune.utils.command_line import doc, parse
from lvprune_shapes.dataset import QUESTION_TYPES, ShapesConfig, make_shapes_dataset
from lvprune_shapes.world2 import TASKS, World2Config, make_world2_dataset


@dataclass
class MakeShapesConfig:
    """The splits to write and the scenes' settings (`ShapesConfig`)."""

    out: str | None = doc(None, "output folder, also the image folder for the loader (required)")
    world: int = doc(1, "reference world: 1 (one short question about one image) or 2 (several images, long "
                        "answers, conversations)")
    train: int = doc(4000, "training records")
    validation: int = doc(500, "validation records")
    test: int = doc(500, "test records")
    seed: int = doc(0, "seed of the scenes and questions")
    image_size: int = doc(96, "square image side in pixels")
    min_objects: int = doc(3, "fewest objects in a scene")
    max_objects: int = doc(5, "most objects in a scene")
    max_count: int = doc(4, "largest answer of counting questions")
    turns: int = doc(1, "questions per image (multi-turn if > 1)")
    types: list[str] = doc(list(QUESTION_TYPES), f"world 1's question types, of {', '.join(QUESTION_TYPES)}")
    tasks: list[str] = doc(list(TASKS), f"world 2's first-turn tasks, of {', '.join(TASKS)}")
    max_images: int = doc(4, "world 2: most images a prompt holds (2-4)")

    def shapes(self) -> ShapesConfig:
        return ShapesConfig(image_size=self.image_size, min_objects=self.min_objects, max_objects=self.max_objects,
                            max_count=self.max_count, turns=self.turns, types=tuple(self.types), seed=self.seed)

    def world2(self) -> World2Config:
        return World2Config(image_size=self.image_size, max_images=self.max_images, turns=self.turns,
                            tasks=tuple(self.tasks), seed=self.seed)


def main(argv=None) -> None:
    settings = parse(MakeShapesConfig, argv, prog="python -m lvprune_shapes.make_shapes")
    if settings.out is None:
        sys.exit("python -m lvprune_shapes.make_shapes: --out DIR is required")
    sizes = {"train": settings.train, "validation": settings.validation, "test": settings.test}
    sizes = {split: n for split, n in sizes.items() if n > 0}
    if settings.world not in (1, 2):
        sys.exit(f"python -m lvprune_shapes.make_shapes: --world must be 1 or 2, got {settings.world}")
    start = time.perf_counter()
    print(f"writing world {settings.world}'s {sum(sizes.values())} records and their images to {settings.out} ...")
    if settings.world == 1:
        paths = make_shapes_dataset(settings.out, sizes, settings.shapes())
    else:
        paths = make_world2_dataset(settings.out, sizes, settings.world2())
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        print(f"{split}: {sizes[split]} records -> {path}")
    print(f"{sum(sizes.values())} records in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
