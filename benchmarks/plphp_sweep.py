"""PLPHP's settings measured on the reference base: accuracy and KV cache per (start layer, r, Δr).

    python benchmarks/plphp_sweep.py --pruner outputs/reference-pruner/final [--base DIR] [--test_records 500]

For every first pruned layer L and the paper's (r, Δr) sweep, with the thresholds `alpha`/`beta` measured
for that L (`lvprune.methods.plphp.suggest_thresholds`), it runs PLPHP alone and on top of LVPruning at
ρ = 0.5 over the shapes test questions and prints accuracy and KV bytes (% of the unpruned cache), the way
`lvprune bench` measures them. PLPHP's paper publishes neither L nor the thresholds; this is how the
project picks them for a base.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from lvprune.bench.harness import load_base, measure_method, test_split
from lvprune.bench.methods import REFERENCE_RHO, Method, schedule
from lvprune.bench.questions import load_questions, prompt_batches
from lvprune.methods.lvpruning.modules import LVPrunerModel
from lvprune.methods.plphp import PLPHPPress, suggest_thresholds, vision_attention_profile
from lvprune.utils.command_line import doc, parse
from lvprune_shapes.bench import ShapesBenchConfig, resolve

PAPER_RATES = ((0.3, 0.3), (0.4, 0.3), (0.5, 0.3))
PROFILE_QUESTIONS = 128  # questions whose last-token vision attention sets alpha/beta


@dataclass
class SweepConfig(ShapesBenchConfig):
    """The shapes benchmark's settings (base, pruner, test split, cache) plus the sweep's."""

    start_layers: list[int] = doc([0, 1, 2], "first pruned layers (0-based) to sweep")
    allocations: list[str] = doc(["sample"], "PLPHP's allocation: sample (the paper's) or batch (one count per "
                                 "answering batch of 32 prompts); KV is measured at batch 1, where both are the same")


def main(argv=None) -> None:
    args = parse(SweepConfig, argv, prog="python benchmarks/plphp_sweep.py")
    if args.pruner is None:
        raise SystemExit("python benchmarks/plphp_sweep.py: --pruner DIR is required")
    config = resolve(SweepConfig(**{**args.__dict__, "out": args.out or ".", "examples": 1}))
    model, processor = load_base(config.base)
    pruner = LVPrunerModel.from_pretrained(config.pruner).eval()
    questions = load_questions(*test_split(config), limit=config.test_records)
    with torch.no_grad():
        batches = prompt_batches(questions[:PROFILE_QUESTIONS], processor, batch_size=16)
        profile = vision_attention_profile(model, batches)
    unpruned = measure_method(Method("unpruned"), model, processor, questions, config)
    print(f"unpruned: accuracy {100 * unpruned['accuracy']:.1f}; vision attention per layer "
          f"{suggest_thresholds(profile)['per_layer_mean']}")
    print("| start layer | alpha | beta | r | Δr | allocation | PLPHP acc. | PLPHP KV | LVP 0.5 + PLPHP acc. | "
          "LVP 0.5 + PLPHP KV |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for start, (r, delta_r), allocation in itertools.product(args.start_layers, PAPER_RATES, args.allocations):
        thresholds = suggest_thresholds(profile, start)
        plphp = PLPHPPress(r=r, delta_r=delta_r, alpha=thresholds["alpha"], beta=thresholds["beta"],
                            start_layer=start, allocation=allocation)
        cells = []
        for method in (Method("plphp", press=plphp), Method("both", pruner, tuple(schedule(REFERENCE_RHO)), plphp)):
            row = measure_method(method, model, processor, questions, config)
            cells += [f"{100 * row['accuracy']:.1f}", f"{row['kv_cache_bytes'] / unpruned['kv_cache_bytes']:.0%}"]
        print(f"| {start} | {plphp.alpha:.3f} | {plphp.beta:.3f} | {r} | {delta_r} | {allocation} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
