"""Write the synthetic shapes VQA set (LLaVA-1.5 instruction format) to a folder.

    python data/make_shapes.py --out outputs/shapes --train 4000 --validation 500 --test 500 --seed 0

Writes `<out>/{train,validation,test}.json`, the PNGs under `<out>/images/<split>/` and
`<out>/shapes_config.json`. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import time

from lvprune.data.shapes import QUESTION_TYPES, ShapesConfig, make_shapes_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (also the image folder for the loader)")
    parser.add_argument("--train", type=int, default=4000, help="number of training records")
    parser.add_argument("--validation", type=int, default=500, help="number of validation records")
    parser.add_argument("--test", type=int, default=500, help="number of test records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96, help="square image side in pixels")
    parser.add_argument("--min-objects", type=int, default=3)
    parser.add_argument("--max-objects", type=int, default=5)
    parser.add_argument("--max-count", type=int, default=4, help="largest answer of counting questions")
    parser.add_argument("--turns", type=int, default=1, help="questions per image (multi-turn if > 1)")
    parser.add_argument("--types", nargs="+", default=list(QUESTION_TYPES), choices=QUESTION_TYPES)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    config = ShapesConfig(
        image_size=args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        max_count=args.max_count,
        turns=args.turns,
        types=tuple(args.types),
        seed=args.seed,
    )
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    sizes = {split: n for split, n in sizes.items() if n > 0}
    start = time.perf_counter()
    paths = make_shapes_dataset(args.out, sizes, config)
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        print(f"{split}: {sizes[split]} records -> {path}")
    print(f"{sum(sizes.values())} images in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
