"""The benchmark harness on a tiny reference base (through the shapes benchmark, which makes its pruner and
test split): its files, fields, methods, counts and metrics."""

import importlib.util
import json
import math

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaForConditionalGeneration

from lvprune.bench import METHOD_NAMES, RESULT_FIELDS
from lvprune.bench.metrics import chance_accuracy, exact_match, yes_no_f1
from lvprune.bench.profile import prefill_flops
from lvprune.bench.questions import load_questions, single_prompt
from lvprune_shapes.bench import main
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.reference import ReferenceConfig, load_reference, reference_base

TINY = ReferenceConfig(image_size=24, patch_size=4, vision_hidden_size=16, vision_layers=1, vision_heads=2,
                       hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, train_records=8, test_records=4,
                       turns=1, steps=2, batch_size=4, vision_steps=2, vision_batch_size=4, warmup_steps=1)
# kvpress's scorers benchmarked as rows, where kvpress is installed (`make test` installs it)
KVPRESS = ("knorm", "snapkv") if importlib.util.find_spec("kvpress") else ()
KVPRESS_ROWS = tuple(f"kvpress-{name}" for name in KVPRESS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return reference_base(tmp_path_factory.mktemp("bench") / "base", TINY, progress=False)


@pytest.fixture(scope="module")
def results(base, tmp_path_factory):
    """`python -m lvprune_shapes.bench --quick` on the tiny base (its pruner trained on a few records)."""
    root = tmp_path_factory.mktemp("bench-run")
    assert main(["--quick", "--out", str(root / "out"), "--base", str(base), "--cache_dir", str(root / "cache"),
                 "--test_records", "10", "--batch_size", "4", *(["--kvpress", *KVPRESS] if KVPRESS else [])]) == 0
    return root / "out"


def test_results_json_has_exactly_the_fields_and_methods(results):
    rows = json.loads((results / "results.json").read_text())
    assert [row["method"] for row in rows] == list(METHOD_NAMES) + list(KVPRESS_ROWS)
    for row in rows:
        assert tuple(row) == RESULT_FIELDS
        assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in RESULT_FIELDS[1:])


def test_pruned_kv_and_flops_follow_the_schedules(results):
    rows = {row["method"]: row for row in json.loads((results / "results.json").read_text())}
    # Random pruning and LVPruning at ρ=0.5 hold the same tokens in every layer, so the same KV bytes.
    assert rows["random"]["kv_cache_bytes"] == rows["lvpruning-0.5"]["kv_cache_bytes"]
    assert rows["lvpruning-0.45"]["kv_cache_bytes"] < rows["lvpruning-0.5"]["kv_cache_bytes"] \
        < rows["lvpruning-0.6"]["kv_cache_bytes"] < rows["unpruned"]["kv_cache_bytes"]
    assert rows["lvpruning-0.5+plphp"]["kv_cache_bytes"] < rows["lvpruning-0.5"]["kv_cache_bytes"]
    assert rows["plphp"]["kv_cache_bytes"] < rows["unpruned"]["kv_cache_bytes"]
    # Random scores cost nothing, so random pruning's FLOPs are LVPruning's minus its decision modules.
    assert rows["random"]["prefill_tflops"] < rows["lvpruning-0.5"]["prefill_tflops"]
    assert rows["fastv"]["prefill_tflops"] < rows["unpruned"]["prefill_tflops"]
    # PyramidDrop at LVPruning's stages and ratios holds its tokens; DivPrune holds its ratio in every layer.
    assert rows["pdrop"]["kv_cache_bytes"] == rows["lvpruning-0.5"]["kv_cache_bytes"]
    assert rows["divprune-0.1"]["kv_cache_bytes"] < rows["divprune-0.475"]["kv_cache_bytes"] \
        < rows["unpruned"]["kv_cache_bytes"]
    if KVPRESS_ROWS:  # the same counts in every layer, chosen by different scores
        assert rows["kvpress-knorm"]["kv_cache_bytes"] == rows["kvpress-snapkv"]["kv_cache_bytes"] \
            < rows["unpruned"]["kv_cache_bytes"]


def test_figures_and_table_are_written(results):
    for name in ("accuracy_vs_flops.png", "kept_patches.png"):
        with Image.open(results / name) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200
    table = (results / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHOD_NAMES + KVPRESS_ROWS)


def test_a_plot_line_joins_a_methods_budgets():
    from lvprune.bench.plots import method_of

    names = ["lvpruning-0.6", "lvpruning-0.45", "divprune-0.475", "lvpruning-0.5+plphp", "fastv", "kvpress-snapkv"]
    assert [method_of(n) for n in names] == ["lvpruning", "lvpruning", "divprune", "lvpruning-0.5+plphp", "fastv",
                                             "kvpress-snapkv"]


def test_prefill_flops_match_the_eager_count(base, tmp_path):
    """Our count of the SDPA model (CPU SDPA formula lent to FlopCounterMode) equals the eager model's."""
    model, processor = load_reference(base)
    paths = make_shapes_dataset(tmp_path, {"test": 1}, ShapesConfig(image_size=TINY.image_size))
    inputs = single_prompt(load_questions(paths["test"], tmp_path)[0], processor)
    eager = LlavaForConditionalGeneration.from_pretrained(base, attn_implementation="eager").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager(**inputs, use_cache=True, logits_to_keep=1)
    assert prefill_flops(model, inputs) == counter.get_total_flops() > 0


def test_metrics_by_hand():
    answers = ["yes", "no", "yes", "red", "two", "no"]
    predictions = ["yes", "yes", " no ", "red", "three", "maybe"]
    assert exact_match(predictions, answers) == pytest.approx(2 / 6)
    # yes/no questions: (yes, yes) TP, (yes, no) FP, (no, yes) FN, ("maybe" -> no, no) TN -> F1 = 2/(2+1+1).
    assert yes_no_f1(predictions, answers) == pytest.approx(0.5)
    assert chance_accuracy(answers, ["p", "p", "p", "c", "n", "p"]) == pytest.approx((2 + 1 + 1) / 6)
    assert math.isnan(yes_no_f1(["red"], ["red"]))


def test_the_plphp_rows_take_the_named_plphp_fields():
    from lvprune.bench import BenchConfig
    from lvprune.methods.plphp import PLPHPPress
    from lvprune.utils.command_line import parse

    assert BenchConfig().plphp_rows() == PLPHPPress(queries="last")
    config = parse(BenchConfig, ["--plphp_r", "0.3", "--plphp_delta_r", "0.3", "--plphp_alpha", "0.6",
                                 "--plphp_beta", "0.25", "--plphp_start_layer", "0", "--plphp_queries", "all"])
    assert config.plphp_rows() == PLPHPPress(r=0.3, delta_r=0.3, alpha=0.6, beta=0.25, start_layer=0,
                                              queries="all")
    assert BenchConfig(plphp_r=0.3).plphp_rows() == PLPHPPress(r=0.3, queries="last")  # the rest default
    with pytest.raises(ValueError, match="beta"):
        BenchConfig(plphp_alpha=0.2, plphp_beta=0.6)


def test_bench_config_refuses_empty_counts_and_missing_inputs(tmp_path):
    from lvprune.bench import BenchConfig

    with pytest.raises(ValueError, match="timing_repeats=0"):
        BenchConfig(out=str(tmp_path), timing_repeats=0)
    with pytest.raises(ValueError, match="test_records=0"):
        BenchConfig(out=str(tmp_path), test_records=0)
    with pytest.raises(ValueError, match="lvprune bench needs --pruner, --test_json .*python -m lvprune_shapes.bench"):
        BenchConfig(out=str(tmp_path), base="b").check_complete()


def test_timing_keeps_the_fastest_run(monkeypatch):
    from lvprune.bench import profile

    clock = iter([0.0, 0.030, 1.0, 1.010, 2.0, 2.020])  # start/end of three runs: 30, 10 and 20 ms
    monkeypatch.setattr(profile.time, "perf_counter", lambda: next(clock))
    calls = []
    assert profile._fastest_ms(lambda: calls.append(1), runs=3) == pytest.approx(10.0)
    assert len(calls) == 4  # one warm-up, three timed
