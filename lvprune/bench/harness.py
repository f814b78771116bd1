"""`lvprune bench`: every method side by side on one base model and one test split, in one process.

For each method (see `methods.py`): exact-match `accuracy` over all test questions, `yes_no_f1` over the
yes/no ones (batched greedy generation); at batch 1, `prefill_tflops` (FlopCounterMode, one prefill) and
`kv_cache_bytes` (mean over `kv_samples` prompts); and `prefill_ms` and `decode_ms_per_token` of one batch of
`timing_batch_size` prompts: in each of `timing_runs` rounds every method in turn runs `timing_repeats` times
back to back and its fastest run counts (other tenants of a shared machine only ever add time); the medians
over the rounds are reported. Taking turns makes a change in machine load hit all methods alike. Timing is
batched because that is how a model is served, and because at batch 1 a small model's forward is bound by
per-operator overhead, not by the FLOPs that pruning removes. Writes `results.json`,
`results.md`, `accuracy_vs_flops.png` and (for LLaVA-1.5 bases, whose images are one grid of patches)
`kept_patches.png` to the output folder. The base, the pruner and the test split are given (`BenchConfig`); the
shapes benchmark with its reference base and defaults is `python -m lvprune_shapes.bench`.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lvprune.bench import profile
from lvprune.bench.answers import answer_questions
from lvprune.bench.config import BenchConfig
from lvprune.bench.methods import build_methods
from lvprune.bench.plots import plot_accuracy_vs_flops, plot_kept_patches
from lvprune.bench.questions import load_questions, prompt_batches, question_image, single_prompt
from lvprune.bench.report import RESULT_FIELDS, write_results
from lvprune.families import backbone_for
from lvprune.methods.lvpruning.modules import LVPrunerModel


def load_base(folder) -> tuple[torch.nn.Module, object]:
    """(model in fp32 and eval mode, processor) of any supported family."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def test_split(config: BenchConfig) -> tuple[Path, Path]:
    """(test records, their image folder)."""
    return Path(config.test_json), Path(config.image_folder or Path(config.test_json).parent)


def pick_examples(questions, count: int):
    """The first question of each type, then more in order, up to `count`: what `kept_patches.png` shows."""
    firsts = {}
    for q in questions:
        firsts.setdefault(q.type, q)
    chosen = list(firsts.values())[:count]
    return chosen + [q for q in questions if q not in chosen][: count - len(chosen)]


def measure_method(method, model, processor, questions, config: BenchConfig) -> dict:
    """Accuracy, yes/no F1, FLOPs, KV bytes and kept patches of one method (timing is done apart)."""
    from lvprune.bench.evaluate import score

    backbone = backbone_for(model.config)
    single = [single_prompt(q, processor, backbone=backbone) for q in questions[: config.kv_samples]]
    with method.applied(model):
        predictions = answer_questions(model, processor, questions, batch_size=config.batch_size,
                                       desc=f"{method.name}: answers")
        flops = profile.prefill_flops(model, single[0])
        kv = [profile.kv_cache_bytes(model, inputs) for inputs in single]
        kept = [profile.kept_vision_tokens(model, single_prompt(q, processor, backbone=backbone))
                for q in pick_examples(questions, config.examples)]
    scores = score(predictions, questions)
    return {"method": method.name, "accuracy": scores["accuracy"], "yes_no_f1": scores["yes_no_f1"],
            "prefill_tflops": flops / 1e12, "kv_cache_bytes": statistics.mean(kv),
            "accuracy_by_type": scores["accuracy_by_type"], "kept": kept}


def time_methods(methods, model, inputs: dict, config: BenchConfig) -> dict[str, dict]:
    """Median over rounds of each method's fastest prefill ms and decode ms/token; methods take turns each round."""
    samples = {m.name: {"prefill_ms": [], "decode_ms_per_token": []} for m in methods}
    runs = config.timing_repeats
    for _ in tqdm(range(config.timing_runs), desc="timing rounds", leave=False):
        for method in methods:
            with method.applied(model):
                samples[method.name]["prefill_ms"].append(profile.prefill_ms(model, inputs, runs=runs))
                samples[method.name]["decode_ms_per_token"].append(
                    profile.decode_ms_per_token(model, inputs, config.decode_tokens, runs=runs))
    return {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in samples.items()}


def run(config: BenchConfig) -> list[dict]:
    """Run the benchmark and write its files to `config.out`; returns the rows of `results.json`."""
    config.check_complete()
    config = config.resolved()
    torch.manual_seed(config.seed)
    base_dir = config.base
    model, processor = load_base(base_dir)
    questions = load_questions(*test_split(config), limit=config.test_records)
    pruner = LVPrunerModel.from_pretrained(config.pruner).eval()
    methods = build_methods(model, pruner, plphp=config.plphp_rows(), fastv_layer=config.fastv_layer,
                            seed=config.seed, kvpress=tuple(config.kvpress))
    rows = [measure_method(m, model, processor, questions, config) for m in tqdm(methods, desc="methods")]
    timing_batch = next(prompt_batches(questions[: config.timing_batch_size], processor, config.timing_batch_size,
                                       backbone=backbone_for(model.config)))
    timings = time_methods(methods, model, timing_batch, config)
    for row in rows:
        row.update(timings[row["method"]])
    examples = [{"image": np.asarray(question_image(q)), "title": f"{q.question}\n→ {q.answer}",
                 "kept": {row["method"]: row["kept"][i] for row in rows}}
                for i, q in enumerate(pick_examples(questions, config.examples))]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(rows, out, context={"base": str(base_dir), "questions": len(questions),
                                      "vision_tokens": len(rows[0]["kept"][0]),
                                      "timing batch": len(timing_batch["input_ids"])})
    plot_accuracy_vs_flops(rows, out / "accuracy_vs_flops.png")
    if backbone_for(model.config).model_types == ("llava",):  # one square grid of patches an image
        plot_kept_patches(examples, [r["method"] for r in rows], model.config.vision_config.patch_size,
                          out / "kept_patches.png")
    return [{k: row[k] for k in RESULT_FIELDS} for row in rows]

