"""Every method per task on the second reference world (`lvprune_shapes.world2_bench`):

    python benchmarks/world2_bench.py [--base assets/reference-base-v2] [--pruner DIR|train] [--conversations 150]
        [--kvpress knorm snapkv] [--figures docs/figures]

The main job runs the same benchmark after its export with `make demo WORLD=v2`.
"""

from lvprune_shapes.world2_bench import main

if __name__ == "__main__":
    main()
