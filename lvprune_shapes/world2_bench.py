"""Every method per task on the second reference world: conversations about 1-4 images, answered from the cache.

    python benchmarks/world2_bench.py [--base assets/reference-base-v2] [--pruner DIR|train] [--conversations 150]
        [--kvpress knorm snapkv] [--figures docs/figures]

(`make demo WORLD=v2` runs it after training its pruner: `lvprune_shapes.job`.)

Each method (`lvprune.bench.methods.build_methods`: the training-free rows, and LVPruning's with `--pruner`, a
pruner trained on this base) answers fresh test conversations of world 2 (`lvprune_shapes.world2`, seed
`--seed`, 3 turns) turn by turn from its pruned or pressed cache (`lvprune.bench.conversations`): single-image
questions, which image / how many images / compare two, and list answers (item F1). Per method: the score of
each task, the overall mean of the task scores, the KV cache held after the first prompt's prefill as % of the
unpruned cache (mean over `--kv_samples` prompts of 1-4 images), and the answer-decode time (ms a token, batch
1, on a four-image prompt; `lvprune.bench.harness.time_methods`: methods take turns, the fastest of
`--timing_repeats` counts, median over rounds; the json has the prefill ms too).
The stage methods run at LVPruning ρ 0.5's schedule (ratios 0.5, 0.3, 0.1) at the paper's layers scaled to the
base's depth; PLPHP with its defaults, at one rate in every layer (`plphp-uniform`, Δr 0: what its
multi-image claim rests on is the difference), and a random choice of as many slots (`plphp-random-slots`: what
its ranking is worth). Writes world2_bench.md / .json / .png (score per task, a bar per
method) into `--figures`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lvprune import PLPHPPress
from lvprune.bench import profile
from lvprune.bench.conversations import (answer_conversation, conversation_images, first_prompt, load_conversations,
                                         score_conversations)
from lvprune.bench.harness import load_base, time_methods
from lvprune.bench.methods import Method, RandomSlots, build_methods
from lvprune.families import backbone_for
from lvprune.utils.command_line import doc, parse
from lvprune_shapes.bench import DEFAULT_CACHE_DIR, image_size
from lvprune_shapes.bench_pruner import bench_pruner
from lvprune_shapes.reference.world2 import SHIPPED_DIR, TRAIN_COMMAND, shipped_world2_base
from lvprune_shapes.world2 import TASKS, World2Config, make_world2_dataset


@dataclass
class World2BenchConfig:
    base: str = doc(str(SHIPPED_DIR), "the base's folder (default: the shipped second base)")
    pruner: str | None = doc(None, "an LVPruning pruner trained on the base; `train`: train one (cached) on "
                             "--pruner_records conversations; none: the training-free rows only")
    pruner_records: int = doc(4800, "conversations `--pruner train` trains on (one epoch, 8 a step)")
    conversations: int = doc(150, "test conversations of 3 turns, tasks balanced")
    seed: int = doc(7, "seed of the test conversations (the base's report used seed 0's test split)")
    tasks: list[str] = doc(list(TASKS), "the first turns' tasks")
    kvpress: list[str] = doc([], "kvpress scorers to add as rows (needs kvpress)")
    uniform_rate: float | None = doc(None, "plphp-uniform's rate (none: PLPHP's base rate r; set it to match "
                                     "PLPHP's KV held, which the layer-adaptive rates move)")
    methods: list[str] = doc([], "only these rows (none: every one)")
    kv_samples: int = doc(20, "first prompts whose KV cache is measured")
    timing_runs: int = doc(3, "timing rounds (methods take turns each round; `harness.time_methods`)")
    timing_repeats: int = doc(3, "runs per method per round, the fastest counts")
    decode_tokens: int = doc(16, "tokens the decode timing generates")
    figures: str | None = doc("docs/figures", "where world2_bench.md/.json/.png go (none: print only)")
    cache_dir: str | None = doc(None, "where the test conversations are written (default: ~/.cache/lvprune)")


def test_conversations(config: World2BenchConfig, size: int):
    """The fresh test split at the base's image size, generated once into the cache."""
    folder = Path(config.cache_dir or DEFAULT_CACHE_DIR).expanduser() / (
        f"world2-test-{size}px-{config.conversations}-seed{config.seed}-{'-'.join(config.tasks)}")
    if not (folder / "test.json").is_file():
        print(f"writing {config.conversations} test conversations to {folder} ...", flush=True)
        make_world2_dataset(folder, {"test": config.conversations},
                            World2Config(image_size=size, turns=3, tasks=tuple(config.tasks), seed=config.seed))
    return load_conversations(folder / "test.json", folder)


def first_prompts(conversations, processor, model) -> list[dict]:
    """Each conversation's first prompt (its images and first question) as model inputs of batch 1."""
    backbone = backbone_for(model.config)
    return [first_prompt(c, conversation_images(c), processor, backbone) for c in conversations]


def measure(method, model, processor, conversations, prompts: list[dict]) -> dict:
    """A row: `method`'s scores per task and turn (`score_conversations`), each answer generated from its pruned
    or pressed cache; the KV held over `prompts` (`kv_fraction`); the seconds it took."""
    start = time.perf_counter()
    with method.applied(model):
        said = [answer_conversation(model, processor, c) for c in tqdm(conversations, desc=method.name, leave=False)]
    scores = score_conversations(conversations, said)
    print(f"{method.name}: overall {100 * scores['overall']:.1f}, "
          + ", ".join(f"{t} {100 * v:.1f}" for t, v in scores["by_task"].items()), flush=True)
    return {"method": method.name, **scores, "kv": kv_fraction(model, method, prompts),
            "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def kv_fraction(model, method, prompts: list[dict]) -> float:
    """Mean over prompts of the KV bytes held after the prefill as a fraction of the unpruned cache's (the
    pruning stats' own `kv_cache_fraction`; 1 for the stock model)."""
    with method.applied(model):
        if method.stock:
            return 1.0
        fractions = []
        for inputs in prompts:
            profile.prefill(model, inputs)
            fractions.append(model.pruning_stats.kv_cache_fraction)
    return statistics.mean(fractions)


def run(config: World2BenchConfig, plphp: PLPHPPress | None = None) -> list[dict]:
    """The rows (one per method: scores per task and turn, KV held, timings), written into `config.figures`.
    plphp: the PLPHP row's press (default: the paper's settings)."""
    from lvprune.methods.lvpruning.modules import LVPrunerModel

    if Path(config.base).resolve() == SHIPPED_DIR:
        shipped_world2_base()  # intact, or refused with the command that trains one
    elif not (Path(config.base) / "config.json").is_file():
        raise SystemExit(f"{config.base}: no base there. Train the second base with `{TRAIN_COMMAND}` and pass "
                         "--base DIR.")
    model, processor = load_base(config.base)
    size = image_size(config.base)
    conversations = test_conversations(config, size)
    pruner_dir = config.pruner
    if pruner_dir == "train":
        # micro-batches of one conversation, 8 to a step (configs/world2.yaml says why)
        pruner_dir = bench_pruner(config.base, train_records=config.pruner_records, per_device_batch_size=1,
                                  gradient_accumulation_steps=8, image_size=size, world=2,
                                  cache_dir=config.cache_dir and Path(config.cache_dir) / "bench-pruners")
    pruner = LVPrunerModel.from_pretrained(pruner_dir).eval() if pruner_dir else None
    plphp = plphp or PLPHPPress()
    methods = build_methods(model, pruner, plphp=plphp, kvpress=tuple(config.kvpress))
    # PLPHP's claim (its gain is largest on multi-image tasks) is its layer-adaptive rate: the same press at one
    # rate; its ranking's worth is the difference to a random choice of as many slots in every head.
    uniform = dataclasses.replace(plphp, delta_r=0.0, r=config.uniform_rate or plphp.r)
    at = next(i for i, m in enumerate(methods) if m.name == "plphp") + 1
    methods[at:at] = [Method("plphp-uniform", press=uniform),
                      Method("plphp-random-slots", press=RandomSlots(**plphp.to_dict()))]
    if config.methods:
        methods = [m for m in methods if m.name in config.methods]
    prompts = first_prompts(conversations[: config.kv_samples], processor, model)
    rows = [measure(method, model, processor, conversations, prompts) for method in tqdm(methods, desc="methods")]
    widest = max(conversations, key=lambda c: len(c.images))
    timings = time_methods(methods, model, first_prompts([widest], processor, model)[0], config)
    for row in rows:
        row.update(timings[row["method"]])
    table = markdown(rows, len(conversations))
    print(table)
    if config.figures:
        out = Path(config.figures)
        out.mkdir(parents=True, exist_ok=True)
        (out / "world2_bench.md").write_text(table)
        (out / "world2_bench.json").write_text(json.dumps({"base": config.base, "seed": config.seed,
                                                           "rows": rows}, indent=1) + "\n")
        plot(rows, out / "world2_bench.png")
    return rows


def markdown(rows: list[dict], conversations: int) -> str:
    """One row per method: each task's score, the overall mean, KV held (% of unpruned), decode ms/token ("n/a"
    where the timing noise exceeded the difference it measures: `profile.decode_ms_per_token` <= 0)."""
    tasks = list(rows[0]["by_task"])
    head = (f"| method ({conversations} conversations) | " + " | ".join(tasks)
            + " | all | turn 1 | later turns | KV % | decode ms/token |")
    lines = [head, "|---" * (len(tasks) + 6) + "|"]
    for row in rows:
        turns = row["by_turn"]
        later = statistics.mean(v for k, v in turns.items() if int(k) > 1)
        lines.append(f"| {row['method']} | " + " | ".join(f"{100 * row['by_task'][t]:.1f}" for t in tasks)
                     + f" | {100 * row['overall']:.1f} | {100 * turns[1]:.1f} | {100 * later:.1f}"
                     + f" | {100 * row['kv']:.0f} | {decode_cell(row['decode_ms_per_token'])} |")
    return "\n".join(lines) + "\n"


def decode_cell(ms: float) -> str:
    # a difference of two timings: too few tokens or runs on a busy machine can make it <= 0, which is no time
    return f"{ms:.1f}" if ms > 0 else "n/a"


def plot(rows: list[dict], path: Path) -> None:
    """Score per task, a bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(rows[0]["by_task"])
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(max(9, 1.8 * len(tasks)) + 2.5, 4.5))
    for i, row in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(tasks))]
        ax.bar(xs, [100 * row["by_task"][t] for t in tasks], width, color=colours[i % len(colours)],
               label=f"{row['method']} (KV {100 * row['kv']:.0f}%)")
    ax.set_xticks(range(len(tasks)), [t + (" (item F1)" if t == "list" else "") for t in tasks])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    ax.set_title("World 2: each task answered from the pruned cache (3-turn conversations)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    torch.manual_seed(0)
    run(parse(World2BenchConfig, argv, prog="python benchmarks/world2_bench.py"))


if __name__ == "__main__":
    main()
