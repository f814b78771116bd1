"""PLPHP's settings measured on the reference base: accuracy and KV cache per (start layer, r, Δr).

    python benchmarks/plphp_sweep.py --pruner outputs/reference-pruner/final [--base DIR] [--test_records 500]
    python benchmarks/plphp_sweep.py --world 2 [--base DIR] [--pruner DIR] [--test_records 300] [--rates 0.3 0.3]

For every first pruned layer L and the paper's (r, Δr) sweep, with the thresholds `alpha`/`beta` measured
for that L (`lvprune.methods.plphp.suggest_thresholds`), it runs PLPHP alone and on top of LVPruning at
ρ = 0.5 over the shapes test questions and prints accuracy and KV bytes (% of the unpruned cache), the way
`lvprune bench` measures them. PLPHP's paper publishes neither L nor the thresholds; this is how the
project picks them for a base.

`--world 2` measures them on the second world (a second base, `--test_records` fresh 3-turn conversations of
`lvprune_shapes.world2_bench`, seed 7): score per task with every answer generated from the pressed cache, and
KV held after the first prompt's prefill; the thresholds come from the first prompts' vision attention as the
default press sees it (`queries="expected"`). `--pruner` is optional there (its columns are left out).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

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
    world: int = doc(1, "the reference world: 1 (the shapes questions) or 2 (conversations about 1-4 images on a "
                     "second base; --test_records conversations)")
    rates: list[float] = doc([], "the (r, Δr) pairs to sweep, flattened: 0.3 0.3 0.2 0.2 (none: the paper's r 0.3, "
                             "0.4, 0.5 at Δr 0.3)")


def rate_pairs(args: SweepConfig) -> list[tuple[float, float]]:
    if len(args.rates) % 2:
        raise SystemExit(f"--rates takes (r, Δr) pairs; got {len(args.rates)} numbers")
    return list(zip(args.rates[::2], args.rates[1::2])) or list(PAPER_RATES)


def save_table(out: str | None, intro: str, table: list[str]) -> None:
    """The sweep's table as printed, under `intro` (the unpruned score it is read against), in out/plphp_sweep.md
    (no `out`: printed only)."""
    if out:
        path = Path(out) / "plphp_sweep.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(intro + "\n\n" + "\n".join(table) + "\n")
        print(f"wrote {path}")


def sweep_world2(args: SweepConfig) -> None:
    """The sweep on world 2's conversations (`lvprune_shapes.world2_bench`), a row per setting."""
    from lvprune_shapes.bench import image_size
    from lvprune_shapes.reference.world2 import SHIPPED_DIR
    from lvprune_shapes.world2_bench import World2BenchConfig, first_prompts, measure, test_conversations

    bench = World2BenchConfig(base=args.base or str(SHIPPED_DIR), conversations=args.test_records,
                              cache_dir=args.cache_dir)
    model, processor = load_base(bench.base)
    pruner = LVPrunerModel.from_pretrained(args.pruner).eval() if args.pruner else None
    conversations = test_conversations(bench, image_size(bench.base))
    prompts = first_prompts(conversations[: bench.kv_samples], processor, model)
    with torch.no_grad():
        profile = vision_attention_profile(model, first_prompts(conversations[:PROFILE_QUESTIONS], processor, model),
                                           queries=PLPHPPress().queries)
    unpruned = measure(Method("unpruned"), model, processor, conversations, prompts)
    tasks = list(unpruned["by_task"])
    intro = (f"unpruned: {100 * unpruned['overall']:.1f} over {len(conversations)} conversations; vision attention "
             f"per layer {suggest_thresholds(profile)['per_layer_mean']}")
    print(intro)
    methods = ["plphp"] + (["LVP 0.5 + plphp"] if pruner else [])
    table = ["| start layer | alpha | beta | r | Δr | " + " | ".join(f"{m} {c}" for m in methods
                                                                 for c in (*tasks, "all", "KV")) + " |",
             "| ---: " * (5 + len(methods) * (len(tasks) + 2)) + "|"]
    print("\n".join(table), flush=True)
    for start, (r, delta_r), allocation in itertools.product(args.start_layers, rate_pairs(args), args.allocations):
        thresholds = suggest_thresholds(profile, start)
        plphp = PLPHPPress(r=r, delta_r=delta_r, alpha=thresholds["alpha"], beta=thresholds["beta"],
                            start_layer=start, allocation=allocation)
        rows = [measure(Method("plphp", press=plphp), model, processor, conversations, prompts)]
        if pruner:
            rows.append(measure(Method("both", pruner, tuple(schedule(REFERENCE_RHO)), plphp), model, processor,
                                conversations, prompts))
        cells = []
        for row in rows:
            cells += [f"{100 * row['by_task'][t]:.1f}" for t in tasks]
            cells += [f"{100 * row['overall']:.1f}", f"{row['kv']:.0%}"]
        table.append(f"| {start} | {plphp.alpha} | {plphp.beta} | {r} | {delta_r} | " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
    save_table(args.out, intro, table)


def main(argv=None) -> None:
    args = parse(SweepConfig, argv, prog="python benchmarks/plphp_sweep.py")
    if args.world == 2:
        return sweep_world2(args)
    if args.world != 1:
        raise SystemExit(f"--world {args.world}: 1 or 2")
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
    intro = (f"unpruned: accuracy {100 * unpruned['accuracy']:.1f}; vision attention per layer "
             f"{suggest_thresholds(profile)['per_layer_mean']}")
    table = ["| start layer | alpha | beta | r | Δr | allocation | PLPHP acc. | PLPHP KV | LVP 0.5 + PLPHP acc. | "
             "LVP 0.5 + PLPHP KV |", "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    print(intro + "\n" + "\n".join(table), flush=True)
    for start, (r, delta_r), allocation in itertools.product(args.start_layers, rate_pairs(args), args.allocations):
        thresholds = suggest_thresholds(profile, start)
        plphp = PLPHPPress(r=r, delta_r=delta_r, alpha=thresholds["alpha"], beta=thresholds["beta"],
                            start_layer=start, allocation=allocation)
        cells = []
        for method in (Method("plphp", press=plphp), Method("both", pruner, tuple(schedule(REFERENCE_RHO)), plphp)):
            row = measure_method(method, model, processor, questions, config)
            cells += [f"{100 * row['accuracy']:.1f}", f"{row['kv_cache_bytes'] / unpruned['kv_cache_bytes']:.0%}"]
        table.append(f"| {start} | {plphp.alpha:.3f} | {plphp.beta:.3f} | {r} | {delta_r} | {allocation} | "
                     + " | ".join(cells) + " |")
        print(table[-1], flush=True)
    save_table(args.out, intro, table)


if __name__ == "__main__":
    main()
