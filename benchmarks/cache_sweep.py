"""Cache presses side by side where they differ: answers decoded *after* the pressed prefill, on the reference base.

    python benchmarks/cache_sweep.py [--test_records 150] [--budgets 0.5 0.25 0.1 0.05 0.03] [--figures docs/figures]

A one-word answer to a prompt that ends with its question is computed in the prefill, before any press acts, so
it cannot tell cache methods apart (random choice ties PLPHP there). Here every answer is decoded from the
pressed cache:
- second turn: the prompt (image, first question) is prefilled and pressed, then the first answer, the second
  question and the second answer are decoded from that cache (a chat served from its cache);
- context: the prompt up to its image's last token is prefilled and pressed, then the question and its answer
  (kvpress's question-agnostic protocol, a prefix cache).
At each vision budget f (the fraction of vision slots kept), the methods:
- PLPHP as `PLPHPPress()` ranks by default (`queries="expected"`: the attention expected of the queries to come;
  rate r = f, Δr = 0.6 f from layer 0, α/β calibrated for that attention on the reference base's prompts by
  `suggest_thresholds`; and with Δr 0, one rate f in every layer as the kvpress rows keep; and at Δr 0 with the
  queries to come gathered on calibration prompts, `query_statistics`: the test split's first 128 single-question
  prompts, on world 2 the first prompts of 64 conversations of the next seed), a random choice at
  its counts, the paper's ranking by the last prompt token (`queries="last"`, the reference base's α 0.886,
  β 0.678) and the mean over every prompt query (`queries="all"`);
- kvpress's scorers through `lvprune.methods.kvpress` (kvpress's own `score`, every layer): restricted to
  vision slots (compression ratio 1 − f), and as shipped (text competes; ratio set so the cache holds as many
  slots as the vision-only methods');
- LVPruning ρ 0.5 (the shapes benchmark's trained pruner, ratios 0.5, 0.3, 0.1), alone and with PLPHP.
Prints a table (accuracy, KV held after the press as % of unpruned), then lvprune's best press against kvpress's
best at each of kvpress's points (lvprune's interpolated at the same KV held), and writes cache_sweep.md, .json
(`{"results": {protocol: {method: [{budget, accuracy, kv}]}}, "matched": ...}`) and .png (accuracy against KV, a
panel per protocol) into `--figures`. Needs kvpress (README, "Install").

`--world 2` runs the protocols on the second reference world (`--base`: the shipped second base; `--pruner`: an
LVPruning pruner trained on it, else its rows are left out), over `--test_records` fresh 3-turn conversations
about 1-4 images (`lvprune_shapes.world2_bench`'s, seed 7), every turn answered from the cache:
- conversation: the first prompt (images, first question) is prefilled and pressed, every later turn decoded
  from that cache (`lvprune.bench.conversations.answer_conversation`);
- context: the images alone are prefilled and pressed, then every question and answer (`context=True`).
A method's score is the mean of the task scores (list answers by item F1), its KV the first prefill's; the
default ranking's α/β come from the first prompts' expected vision attention. Writes cache_sweep_world2.md,
.json and .png.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import lvprune
from lvprune import PLPHPPress, QueryStatistics, families
from lvprune.bench.harness import load_base
from lvprune.bench.methods import RandomSlots
from lvprune.core.contract import cache_kwarg, output_cache
from lvprune.data.llava_format import load_image, model_inputs, to_messages
from lvprune.utils.command_line import doc, parse
from lvprune_shapes.bench import DEFAULT_CACHE_DIR, ShapesBenchConfig, image_size, resolve
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset

ALPHA, BETA = 0.886, 0.678  # the paper's ranking's thresholds on the reference base (benchmarks/plphp_sweep.py)
CASES = ("second turn", "context")
DEFAULT = "PLPHP (default: expected)"
PROFILE_QUESTIONS = 128  # prompts of the test split whose expected vision attention sets the default's α/β
CALIBRATION_CONVERSATIONS = 64  # world 2: other conversations whose first prompts give the calibrated row's queries
LVPRUNING = [0.5, 0.3, 0.1]  # ρ 0.5: the ratios the shapes benchmark's lvpruning-0.5 row uses


@dataclass
class SweepConfig(ShapesBenchConfig):
    """The shapes benchmark's settings (base, cache) plus the sweep's."""

    test_records: int = doc(150, "two-question test records (world 2: 3-turn conversations)")
    world: int = doc(1, "the reference world: 1 (two-question shapes records) or 2 (conversations about 1-4 images "
                     "on the second base; --pruner optional)")
    budgets: list[float] = doc([0.5, 0.25, 0.1, 0.05, 0.03], "fractions of the vision slots kept")
    figures: str = doc("docs/figures", "folder for cache_sweep.md, .json and .png")
    methods: list[str] = doc([], "only the rows of these names, as the tables print them (none: every row)")

    def wanted(self, name: str) -> bool:
        """Whether row `name` runs (`--methods`)."""
        return not self.methods or name in self.methods


def methods_at(budget: float, pruner, thresholds: dict, config: SweepConfig | None = None, statistics=None) -> dict:
    """name -> setting builder at vision budget `budget`: `build(text, vision)` (the prompt's text and vision slot
    counts, which kvpress's ratio as shipped depends on) returns `lvprune.pruning`'s keyword arguments.
    `thresholds`: the default ranking's α/β; `pruner` None leaves LVPruning's rows out; `config.methods` keeps
    only the rows it names; `statistics`: the queries to come gathered on calibration prompts (`QueryStatistics`),
    for the calibrated row."""
    from lvprune.methods.kvpress import SCORERS, KVPressScorer, scorer

    label = {key: cls.removesuffix("Press") for key, (cls, _) in SCORERS.items()}
    rates = dict(r=budget, delta_r=round(0.6 * budget, 6), start_layer=0)
    default = PLPHPPress(**rates, alpha=thresholds["alpha"], beta=thresholds["beta"])
    paper = PLPHPPress(**rates, alpha=ALPHA, beta=BETA, queries="last")
    presses = {
        DEFAULT: default,
        # One rate in every layer, as the vision-only kvpress rows keep: the ranking alone, at their budget.
        "PLPHP, expected, Δr 0": dataclasses.replace(default, delta_r=0.0),
        **({"PLPHP, calibrated queries, Δr 0": dataclasses.replace(default, delta_r=0.0, statistics=statistics)}
           if statistics is not None else {}),
        "random slots": RandomSlots(**default.to_dict()),
        "PLPHP (paper: last query)": paper,
        "PLPHP, all queries": dataclasses.replace(paper, queries="all"),
    }
    for key in ("snapkv", "tova", "expected_attention", "knorm"):
        presses[f"kvpress {label[key]}, vision"] = KVPressScorer(scorer(key, 1 - budget))
    methods = {name: lambda text, vision, press=press: dict(press=press) for name, press in presses.items()}
    for key in ("snapkv", "expected_attention", "streaming_llm"):
        def shipped(text, vision, key=key):
            # As many slots as the vision-only rows hold: text + f × vision, of text + vision.
            ratio = 1 - (text + budget * vision) / (text + vision)
            return dict(press=KVPressScorer(scorer(key, ratio), scope="all"))
        methods[f"kvpress {label[key]}, as shipped"] = shipped
    for name in (DEFAULT, "PLPHP (paper: last query)") if pruner is not None else ():
        methods[f"LVPruning 0.5 + {name}"] = lambda text, vision, press=presses[name]: dict(
            pruner=pruner, keep_ratios=LVPRUNING, press=press)
    return {name: build for name, build in methods.items() if config is None or config.wanted(name)}


def is_ours(name: str) -> bool:
    """Whether row `name` is one of lvprune's own presses (not kvpress's, not the random control)."""
    return name.startswith("PLPHP")


def calibration(model, processor, config) -> tuple[dict, QueryStatistics]:
    """The reference base's calibration on the first `PROFILE_QUESTIONS` single-question prompts of the test split
    (not the sweep's records): α/β of the default ranking (`queries="expected"`: its profile's thirds from layer 0)
    and the queries to come gathered there (`query_statistics`)."""
    from lvprune.bench.harness import test_split
    from lvprune.bench.questions import load_questions, prompt_batches
    from lvprune.methods.plphp import query_statistics, suggest_thresholds, vision_attention_profile

    questions = load_questions(*test_split(config), limit=PROFILE_QUESTIONS)
    with torch.no_grad():
        profile = vision_attention_profile(model, prompt_batches(questions, processor, batch_size=16), "expected")
    statistics = query_statistics(model, prompt_batches(questions, processor, batch_size=1))
    return suggest_thresholds(profile, start_layer=0), statistics


def interpolated(points: list[dict], kv: float) -> float | None:
    """A method's accuracy at `kv` % of the cache, linear between its measured points; outside them, its end point
    within half a point of KV (PLPHP's `ceil` counts hold a little more than kvpress's `int` ones at a budget),
    else None."""
    ordered = sorted((p["kv"], p["accuracy"]) for p in points)
    for (kv_0, acc_0), (kv_1, acc_1) in zip(ordered, ordered[1:]):
        if kv_0 <= kv <= kv_1:
            return acc_0 if kv_1 == kv_0 else acc_0 + (acc_1 - acc_0) * (kv - kv_0) / (kv_1 - kv_0)
    near = [accuracy for end, accuracy in (ordered[0], ordered[-1]) if abs(end - kv) < 0.5]
    return near[0] if near else None


def matched(results: dict) -> dict:
    """Per protocol, at each budget: kvpress's best row there (the highest accuracy among kvpress's rows) and
    lvprune's best press at the same KV held (the highest of its rows' interpolated accuracies there)."""
    out = {}
    for case, rows in results.items():
        theirs = {name: points for name, points in rows.items() if name.startswith("kvpress")}
        ours = {name: points for name, points in rows.items() if is_ours(name)}
        lines = []
        for budget in sorted({p["budget"] for points in theirs.values() for p in points}, reverse=True):
            name, point = max(((n, p) for n, points in theirs.items() for p in points if p["budget"] == budget),
                              key=lambda item: item[1]["accuracy"])
            at = {n: interpolated(points, point["kv"]) for n, points in ours.items()}
            at = {n: a for n, a in at.items() if a is not None}
            best = max(at, key=at.get) if at else None
            lines.append(dict(budget=budget, kv=point["kv"], kvpress=name, kvpress_accuracy=point["accuracy"],
                              lvprune=best, lvprune_accuracy=at.get(best)))
        out[case] = lines
    return out


def two_turn_split(config: SweepConfig) -> tuple[list[dict], Path]:
    """Records with two questions about each image, at the base's image size, generated into the cache once."""
    size = image_size(config.base)
    folder = Path(config.cache_dir or DEFAULT_CACHE_DIR).expanduser() / (
        f"shapes-test-2turns-{size}px-{config.test_records}-seed{config.seed}")
    if not (folder / "test.json").is_file():
        make_shapes_dataset(folder, {"test": config.test_records}, ShapesConfig(image_size=size, seed=config.seed,
                                                                                 turns=2))
    return json.loads((folder / "test.json").read_text()), folder


def encode(turns: list[dict], image, processor, backbone) -> dict:
    messages = to_messages(turns, [image])
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors=None)
    return model_inputs(out, processor, backbone, with_images=True)


def case_inputs(record: dict, folder: Path, case: str, processor, backbone, image_token_id: int):
    """(prefix length, full input_ids [1, N], pixel_values, expected answer) of a record in protocol `case`."""
    image = load_image(str(folder / record["image"]))
    first, second = record["qa"][:2]
    q1 = {"from": "human", "value": "<image>\n" + first["question"]}
    if case == "context":
        inputs = encode([q1], image, processor, backbone)
        ids = inputs["input_ids"][None]
        prefix = int((ids[0] == image_token_id).nonzero().max()) + 1
        return prefix, ids, inputs["pixel_values"], first["answer"]
    turn1 = encode([q1], image, processor, backbone)
    inputs = encode([q1, {"from": "gpt", "value": first["answer"]}, {"from": "human", "value": second["question"]}],
                    image, processor, backbone)
    ids, prefix = inputs["input_ids"][None], turn1["input_ids"].shape[0]
    assert torch.equal(ids[0, :prefix], turn1["input_ids"]), "the first turn's prompt must prefix the conversation"
    return prefix, ids, inputs["pixel_values"], second["answer"]


def answer(model, tokenizer, prefix, ids, pixel_values, setting) -> tuple[str, float]:
    """The answer decoded from the cache pruned in the prefill of `ids[:, :prefix]` (`setting`: `lvprune.pruning`'s
    keyword arguments, None for the stock model), and that cache's fraction of the unpruned one."""
    torch.manual_seed(0)
    pruning = lvprune.pruning(model, **setting) if setting is not None else contextlib.nullcontext()
    with torch.no_grad(), pruning, warnings.catch_warnings():
        # A cache pressed by the last prompt token's attention warns when it takes new prompt tokens; here that is
        # the setting being measured (the paper's ranking on a later question).
        warnings.filterwarnings("ignore", "this cache was pressed", UserWarning)
        out = model(input_ids=ids[:, :prefix], attention_mask=torch.ones(1, prefix, dtype=torch.long),
                    pixel_values=pixel_values, use_cache=True)
        fraction = model.pruning_stats.kv_cache_fraction if setting is not None else 1.0
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   **{cache_kwarg(model): output_cache(out)}, max_new_tokens=8, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip(), fraction


def measure(model, processor, items, build) -> tuple[float, float]:
    """Accuracy (%) and mean KV fraction (%) of one method over the prepared `items`."""
    right, fractions = 0, []
    for prefix, ids, pixels, expected, text, vision in items:
        setting = build(text, vision) if build is not None else None
        said, fraction = answer(model, processor.tokenizer, prefix, ids, pixels, setting)
        right += said == expected
        fractions.append(fraction)
    return 100 * right / len(items), 100 * sum(fractions) / len(fractions)


def plot(results: dict, unpruned: dict, path: Path, ylabel: str = "accuracy (%)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 5.5), sharey=True)
    names = list(results[cases[0]])
    colours = dict(zip(names, plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]))  # one colour a method
    for ax, case in zip(axes, cases):
        for name, points in results[case].items():
            kv, acc = zip(*sorted((p["kv"], p["accuracy"]) for p in points))
            ours = name.startswith(("PLPHP", "LVPruning"))
            style = "-o" if ours else "--." if name == "random slots" else ":x"
            width = 3 if name == DEFAULT else 2 if ours else 1
            ax.plot(kv, acc, style, label=name, color=colours[name], linewidth=width, markersize=4)
        ax.axhline(unpruned[case], color="black", linewidth=0.8, label="unpruned (100% KV)")
        ax.set(title=case, xlabel="KV cache held after the press (% of unpruned)", xlim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------------- world 2

CASES_WORLD2 = ("conversation", "context")


def world2_counts(model, prompts: list[dict], case: str) -> list[tuple[int, int]]:
    """(text, vision) slots of each conversation's prefill in protocol `case`: the first prompt, or its images."""
    from lvprune.bench.conversations import vision_prefix

    image_token = model.config.image_token_id
    counts = []
    for inputs in prompts:
        length = vision_prefix(inputs, model) if case == "context" else inputs["input_ids"].shape[1]
        vision = int((inputs["input_ids"][0, :length] == image_token).sum())
        counts.append((length - vision, vision))
    return counts


def measure_world2(model, processor, conversations, counts, case: str, build) -> tuple[float, float]:
    """Score (%, mean of the task scores) and mean KV fraction (%) of one method over the conversations, every turn
    answered from the cache of protocol `case` (`build` None: the stock model)."""
    from lvprune.bench.conversations import answer_conversation, score_conversations

    said, fractions = [], []
    for conversation, (text, vision) in zip(conversations, counts, strict=True):
        torch.manual_seed(0)
        setting = build(text, vision) if build is not None else None
        pruning = lvprune.pruning(model, **setting) if setting is not None else contextlib.nullcontext()
        with pruning, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "this cache was pressed", UserWarning)  # the paper's ranking, measured
            said.append(answer_conversation(model, processor, conversation, context=case == "context"))
            fractions.append(model.pruning_stats.kv_cache_fraction if setting is not None else 1.0)
    score = score_conversations(conversations, said)["overall"]
    return 100 * score, 100 * sum(fractions) / len(fractions)


def sweep_world2(args: SweepConfig) -> None:
    """The protocols on world 2's conversations (`--world 2`; the module's docstring)."""
    from lvprune.methods.plphp import query_statistics, suggest_thresholds, vision_attention_profile
    from lvprune_shapes.reference.world2 import SHIPPED_DIR
    from lvprune_shapes.world2_bench import World2BenchConfig, first_prompts, test_conversations

    bench = World2BenchConfig(base=args.base or str(SHIPPED_DIR), conversations=args.test_records,
                              cache_dir=args.cache_dir)
    model, processor = load_base(bench.base)
    pruner = lvprune.LVPrunerModel.from_pretrained(args.pruner).eval() if args.pruner else None
    conversations = test_conversations(bench, image_size(bench.base))
    prompts = first_prompts(conversations, processor, model)
    counts = {case: world2_counts(model, prompts, case) for case in CASES_WORLD2}
    print(f"{len(conversations)} conversations; vision budgets {args.budgets}", flush=True)
    with torch.no_grad():
        profile = vision_attention_profile(model, prompts[:PROFILE_QUESTIONS], queries="expected")
    thresholds = suggest_thresholds(profile, start_layer=0)
    print(f"the default ranking's thresholds on this base: alpha {thresholds['alpha']}, beta {thresholds['beta']}",
          flush=True)
    # The calibrated row's queries to come: the first prompts of other conversations (the next seed's).
    calibrating = dataclasses.replace(bench, conversations=CALIBRATION_CONVERSATIONS, seed=bench.seed + 1)
    statistics = query_statistics(model, first_prompts(test_conversations(calibrating, image_size(bench.base)),
                                                       processor, model))
    print(f"the queries to come gathered over {statistics.rows} text rows of {CALIBRATION_CONVERSATIONS} other "
          f"conversations' first prompts", flush=True)

    def run(case, name, build, budget=None):
        start = time.perf_counter()
        score, kv = measure_world2(model, processor, conversations, counts[case], case, build)
        print(f"vision {budget} | {case} | {name}: {score:.1f} at {kv:.0f}% KV ({time.perf_counter() - start:.0f} s)",
              flush=True)
        return dict(budget=budget, accuracy=score, kv=kv)

    unpruned = {case: run(case, "unpruned", None)["accuracy"] for case in CASES_WORLD2}
    results = {case: {} for case in CASES_WORLD2}
    if pruner is not None and args.wanted("LVPruning 0.5"):
        alone = lambda text, vision: dict(pruner=pruner, keep_ratios=LVPRUNING)  # noqa: E731
        for case in CASES_WORLD2:
            results[case]["LVPruning 0.5"] = [run(case, "LVPruning 0.5", alone)]
    for budget in args.budgets:
        for name, build in methods_at(budget, pruner, thresholds, args, statistics).items():
            for case in CASES_WORLD2:
                results[case].setdefault(name, []).append(run(case, name, build, budget))
    write(Path(args.figures), "cache_sweep_world2", dict(unpruned=unpruned, thresholds=thresholds, results=results),
          intro=f"{len(conversations)} world-2 conversations; score: mean of the task scores (%)\n\n",
          ylabel="score (%, mean of the tasks)")


def write(out: Path, stem: str, found: dict, intro: str = "", ylabel: str = "accuracy (%)") -> None:
    """`stem`.json (`found` plus `matched`), .md (`intro`, then the tables) and .png into `out`; the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    results, unpruned = found["results"], found["unpruned"]
    versus = matched(results)
    (out / f"{stem}.json").write_text(json.dumps({**found, "matched": versus}, indent=1) + "\n")
    budgets = sorted({p["budget"] for rows in results.values() for points in rows.values() for p in points
                      if p["budget"] is not None}, reverse=True)
    table = intro + markdown(results, unpruned, budgets) + "\n" + matched_markdown(versus)
    (out / f"{stem}.md").write_text(table)
    plot(results, unpruned, out / f"{stem}.png", ylabel)
    print(table)


def main(argv=None) -> None:
    args = parse(SweepConfig, argv, prog="python benchmarks/cache_sweep.py")
    if args.world == 2:
        return sweep_world2(args)
    if args.world != 1:
        raise SystemExit(f"--world {args.world}: 1 or 2")
    # The pruner is trained once (cached), unless --methods names no LVPruning row.
    wants_pruner = not args.methods or any(name.startswith("LVPruning") for name in args.methods)
    resolved = resolve(SweepConfig(**{**args.__dict__, "out": args.out or "."}), train_pruner=wants_pruner)
    config = SweepConfig(**{**args.__dict__, "base": resolved.base, "pruner": resolved.pruner})
    model, processor = load_base(config.base)
    pruner = lvprune.LVPrunerModel.from_pretrained(config.pruner).eval() if config.pruner else None
    backbone = families.backbone_for(model.config)
    records, folder = two_turn_split(config)
    image_token = model.config.image_token_id
    print(f"{len(records)} two-question records of {folder}; vision budgets {config.budgets}", flush=True)
    prepared = {}
    for case in CASES:
        items = []
        for record in records:
            prefix, ids, pixels, expected = case_inputs(record, folder, case, processor, backbone, image_token)
            vision = int((ids[0, :prefix] == image_token).sum())
            items.append((prefix, ids, pixels, expected, prefix - vision, vision))
        prepared[case] = items
    unpruned = {case: measure(model, processor, prepared[case], None)[0] for case in CASES}
    print(f"unpruned: {', '.join(f'{c} {a:.1f}' for c, a in unpruned.items())}", flush=True)
    thresholds, statistics = calibration(model, processor, resolved)  # resolved: holds the test split
    print(f"the default ranking's thresholds on this base: alpha {thresholds['alpha']}, beta {thresholds['beta']}",
          flush=True)
    results = {case: {} for case in CASES}
    alone = lambda text, vision: dict(pruner=pruner, keep_ratios=LVPRUNING)  # noqa: E731
    for case in CASES if config.wanted("LVPruning 0.5") else ():
        accuracy, kv = measure(model, processor, prepared[case], alone)
        results[case]["LVPruning 0.5"] = [dict(budget=None, accuracy=accuracy, kv=kv)]
        print(f"{case} | LVPruning 0.5: {accuracy:.1f} at {kv:.0f}% KV", flush=True)
    for budget in config.budgets:
        for name, build in methods_at(budget, pruner, thresholds, config, statistics).items():
            for case in CASES:
                start = time.perf_counter()
                accuracy, kv = measure(model, processor, prepared[case], build)
                results[case].setdefault(name, []).append(dict(budget=budget, accuracy=accuracy, kv=kv))
                print(f"vision {budget:g} | {case} | {name}: {accuracy:.1f} at {kv:.0f}% KV "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    write(Path(config.figures), "cache_sweep", dict(unpruned=unpruned, thresholds=thresholds, results=results))


def markdown(results: dict, unpruned: dict, budgets: list[float]) -> str:
    """Per protocol: a row per method, a column per vision budget, `accuracy (KV %)`."""
    lines = []
    for case in results:
        lines += [f"**{case}** (unpruned {unpruned[case]:.1f} at 100% KV)", "",
                  "| method | " + " | ".join(f"vision {b:g}" for b in budgets) + " |",
                  "| --- |" + " ---: |" * len(budgets)]
        for name, points in results[case].items():
            cells = {p["budget"]: f"{p['accuracy']:.1f} ({p['kv']:.0f}%)" for p in points}
            if None in cells:  # a method without a budget (LVPruning alone): one figure, in every column
                cells = dict.fromkeys(budgets, cells[None])
            lines.append(f"| {name} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def matched_markdown(versus: dict) -> str:
    """lvprune's best press against kvpress's best, per protocol and budget, at the same KV held."""
    lines = ["**lvprune's best press against kvpress's best, at the KV kvpress's best holds** (lvprune's "
             "interpolated between its measured budgets)", "",
             "| protocol | vision budget | KV held | kvpress's best | lvprune's best | difference |",
             "| --- | ---: | ---: | --- | --- | ---: |"]
    for case, rows in versus.items():
        for row in rows:
            ours = row["lvprune_accuracy"]
            cell = f"{ours:.1f} ({row['lvprune']})" if ours is not None else "outside its measured range"
            gap = f"{ours - row['kvpress_accuracy']:+.1f}" if ours is not None else ""
            lines.append(f"| {case} | {row['budget']:g} | {row['kv']:.0f}% | {row['kvpress_accuracy']:.1f} "
                         f"({row['kvpress'].removeprefix('kvpress ')}) | {cell} | {gap} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
