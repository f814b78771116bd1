"""`lvprune bench`: every method side by side on one base model and one test split, in one process.

For each method (see `methods.py`): exact-match `accuracy` over all test questions, `yes_no_f1` over the
yes/no ones (batched greedy generation); at batch 1, `prefill_tflops` (FlopCounterMode, one prefill) and
`kv_cache_bytes` (mean over `kv_samples` prompts); and `prefill_ms` and `decode_ms_per_token` of one batch of
`timing_batch_size` prompts: in each of `timing_runs` rounds every method in turn runs `timing_repeats` times
back to back and its fastest run counts (other tenants of a shared machine only ever add time); the medians
over the rounds are reported. Taking turns makes a change in machine load hit all methods alike. Timing is
batched because that is how a model is served, and because at batch 1 a small model's forward is bound by
per-operator overhead, not by the FLOPs that pruning removes. Writes `results.json`,
`results.md`, `accuracy_vs_flops.png` and `kept_patches.png` to the output folder.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ShapesConfig, make_shapes_dataset
from ..modeling import LVPrunerModel
from ..plphp import PLPHPConfig
from ..reference import load_reference, reference_base
from . import profile
from .answers import answer_questions
from .methods import build_methods
from .plots import plot_accuracy_vs_flops, plot_kept_patches
from .pruner_training import PrunerTrainingConfig, bench_pruner
from .questions import load_questions, prompt_batches, question_image, single_prompt
from .report import RESULT_FIELDS, write_results

QUICK_PRUNER = PrunerTrainingConfig(train_records=64, batch_size=8)


@dataclass
class BenchConfig:
    """What `run` measures. `quick` shrinks every count for a smoke test (see `resolved`)."""

    out: Path
    base: Path | None = None
    pruner: Path | None = None
    test_json: Path | None = None
    image_folder: Path | None = None
    cache_dir: Path | None = None
    quick: bool = False
    test_records: int = 500
    batch_size: int = 32
    timing_runs: int = 7
    timing_repeats: int = 3
    timing_batch_size: int = 16
    decode_tokens: int = 16
    kv_samples: int = 32
    examples: int = 4
    fastv_layer: int = 2
    plphp: PLPHPConfig = field(default_factory=PLPHPConfig)
    seed: int = 0
    pruner_training: PrunerTrainingConfig = field(default_factory=PrunerTrainingConfig)

    def __post_init__(self):
        for name in ("test_records", "batch_size", "timing_runs", "timing_repeats", "timing_batch_size",
                     "decode_tokens", "kv_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")

    def resolved(self) -> "BenchConfig":
        """The config with `quick`'s smaller counts applied."""
        if not self.quick:
            return self
        small = dict(test_records=min(self.test_records, 24), timing_runs=min(self.timing_runs, 2),
                     timing_repeats=1,
                     timing_batch_size=min(self.timing_batch_size, 2),
                     decode_tokens=min(self.decode_tokens, 4), kv_samples=min(self.kv_samples, 4))
        return BenchConfig(**{**self.__dict__, **small, "pruner_training": QUICK_PRUNER, "quick": False})


def test_split(config: BenchConfig, image_size: int) -> tuple[Path, Path]:
    """The test split to use: the given one, else the shapes test split generated into the cache."""
    if config.test_json is not None:
        return Path(config.test_json), Path(config.image_folder or Path(config.test_json).parent)
    cache = Path(config.cache_dir or Path.home() / ".cache" / "lvprune").expanduser()
    shapes = ShapesConfig(image_size=image_size, seed=config.seed)
    low, high = shapes.object_size
    folder = cache / f"shapes-test-{image_size}px-objects{low:g}-{high:g}-{config.test_records}-seed{config.seed}"
    if not (folder / "test.json").is_file():
        make_shapes_dataset(folder, {"test": config.test_records}, shapes)
    return folder / "test.json", folder


def load_pruner(config: BenchConfig, base_dir: Path, model, processor) -> LVPrunerModel:
    """`--pruner`, else the cached (or newly trained) quick pruner of this base."""
    folder = config.pruner or bench_pruner(base_dir, model, processor, config.pruner_training,
                                           cache_dir=config.cache_dir and Path(config.cache_dir) / "bench-pruners")
    return LVPrunerModel.from_pretrained(folder).eval()


def pick_examples(questions, count: int):
    """The first question of each type, then more in order, up to `count`: what `kept_patches.png` shows."""
    firsts = {}
    for q in questions:
        firsts.setdefault(q.type, q)
    chosen = list(firsts.values())[:count]
    return chosen + [q for q in questions if q not in chosen][: count - len(chosen)]


def measure_method(method, model, processor, questions, config: BenchConfig) -> dict:
    """Accuracy, yes/no F1, FLOPs, KV bytes and kept patches of one method (timing is done apart)."""
    from .evaluate import score

    single = [single_prompt(q, processor) for q in questions[: config.kv_samples]]
    with method.applied(model):
        predictions = answer_questions(model, processor, questions, batch_size=config.batch_size,
                                       desc=f"{method.name}: answers")
        flops = profile.prefill_flops(model, single[0])
        kv = [profile.kv_cache_bytes(model, inputs) for inputs in single]
        kept = [profile.kept_vision_tokens(model, single_prompt(q, processor))
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
    config = config.resolved()
    torch.manual_seed(config.seed)
    base_dir = Path(config.base) if config.base else reference_base(config.cache_dir and Path(config.cache_dir) / "reference-base")
    model, processor = load_reference(base_dir)
    size = processor.image_processor.crop_size["height"]
    questions = load_questions(*test_split(config, size), limit=config.test_records)
    pruner = load_pruner(config, base_dir, model, processor)
    methods = build_methods(model, pruner, plphp=config.plphp, fastv_layer=config.fastv_layer, seed=config.seed)
    rows = [measure_method(m, model, processor, questions, config) for m in tqdm(methods, desc="methods")]
    timing_batch = next(prompt_batches(questions[: config.timing_batch_size], processor, config.timing_batch_size))
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
    plot_kept_patches(examples, [r["method"] for r in rows], model.config.vision_config.patch_size,
                      out / "kept_patches.png")
    return [{k: row[k] for k in RESULT_FIELDS} for row in rows]

