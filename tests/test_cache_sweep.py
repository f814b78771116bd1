"""benchmarks/cache_sweep.py's protocols on the shipped reference base: decoding from the prefilled cache with
nothing pruned answers as the stock model does on the whole prompt, and a press keeping every slot changes
nothing."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import world2_conversations

pytest.importorskip("kvpress")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cache_sweep  # noqa: E402
from kvpress import SnapKVPress  # noqa: E402

from lvprune import (
    PLPHPPress,  # noqa: E402
    families,
)
from lvprune.bench.harness import load_base  # noqa: E402
from lvprune.methods.kvpress import KVPressScorer  # noqa: E402
from lvprune_shapes.reference.cache import SHIPPED_DIR  # noqa: E402


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    config = cache_sweep.SweepConfig(base=str(SHIPPED_DIR), test_records=6,
                                     cache_dir=str(tmp_path_factory.mktemp("cache")))
    return cache_sweep.two_turn_split(config)


@pytest.fixture(scope="module")
def reference():
    return load_base(SHIPPED_DIR)


@pytest.mark.parametrize("case", cache_sweep.CASES)
def test_protocols_answer_as_the_stock_model_on_the_whole_prompt(reference, records, case):
    model, processor = reference
    tokenizer, backbone = processor.tokenizer, families.backbone_for(model.config)
    keep_all = [PLPHPPress(r=1.0, delta_r=0.0, start_layer=0),
                KVPressScorer(SnapKVPress(compression_ratio=0.0, window_size=4), scope="all")]
    for record in records[0]:
        prefix, ids, pixels, expected = cache_sweep.case_inputs(record, records[1], case, processor, backbone,
                                                                model.config.image_token_id)
        assert 0 < prefix < ids.shape[1]
        with torch.no_grad():
            whole = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                   max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        stock = tokenizer.decode(whole[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert cache_sweep.answer(model, tokenizer, prefix, ids, pixels, None) == (stock, 1.0)
        for press in keep_all:
            said, fraction = cache_sweep.answer(model, tokenizer, prefix, ids, pixels, dict(press=press))
            assert said == stock and fraction == pytest.approx(1.0), type(press).__name__


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """The shipped second base and 4 fresh test conversations of world 2 (world2_bench's, tasks balanced)."""
    from lvprune_shapes.reference.world2 import SHIPPED_DIR as WORLD2_BASE
    from lvprune_shapes.world2_bench import first_prompts

    model, processor = load_base(WORLD2_BASE)
    conversations = world2_conversations(tmp_path_factory.mktemp("w2"), 4)
    return model, processor, conversations, first_prompts(conversations, processor, model)


@pytest.mark.parametrize("case", cache_sweep.CASES_WORLD2)
def test_world2_protocols_score_keep_all_as_unpruned_and_count_the_prefill(world2, case):
    model, processor, conversations, prompts = world2
    counts = cache_sweep.world2_counts(model, prompts, case)
    whole = cache_sweep.world2_counts(model, prompts, "conversation")
    for (text, vision), (whole_text, whole_vision), inputs in zip(counts, whole, prompts):
        assert whole_text + whole_vision == inputs["input_ids"].shape[1]
        assert vision == whole_vision  # every image is in the prefill, in both protocols
        assert (text < whole_text) == (case == "context")  # the context prefill stops before the question
    unpruned = cache_sweep.measure_world2(model, processor, conversations, counts, case, None)
    assert unpruned[1] == 100.0
    keep_all = cache_sweep.measure_world2(model, processor, conversations, counts, case, lambda text, vision: dict(
        press=PLPHPPress(r=1.0, delta_r=0.0, start_layer=0)))
    assert keep_all == pytest.approx(unpruned)
    half = cache_sweep.measure_world2(model, processor, conversations, counts, case, lambda text, vision: dict(
        press=PLPHPPress(r=0.5, delta_r=0.0, start_layer=0)))
    expected = 100 * sum((t + 0.5 * v) / (t + v) for t, v in counts) / len(counts)
    assert half[1] == pytest.approx(expected, abs=1.0)


def test_world2_tables_and_plot_are_written(tmp_path):
    point = lambda budget, accuracy, kv: dict(budget=budget, accuracy=accuracy, kv=kv)  # noqa: E731
    results = {case: {"PLPHP (default: expected)": [point(0.5, 70.0, 60.0), point(0.25, 60.0, 35.0)],
                      "kvpress SnapKV, vision": [point(0.5, 65.0, 60.0), point(0.25, 40.0, 35.0)]}
               for case in cache_sweep.CASES_WORLD2}
    found = dict(unpruned=dict.fromkeys(cache_sweep.CASES_WORLD2, 80.0), thresholds={}, results=results)
    cache_sweep.write(tmp_path, "cache_sweep_world2", found)
    table = (tmp_path / "cache_sweep_world2.md").read_text()
    assert "| PLPHP (default: expected) | 70.0 (60%) | 60.0 (35%) |" in table
    assert "| conversation | 0.25 | 35% | 40.0 (SnapKV, vision) | 60.0 (PLPHP (default: expected)) | +20.0 |" in table
    saved = json.loads((tmp_path / "cache_sweep_world2.json").read_text())
    assert saved["results"] == results and (tmp_path / "cache_sweep_world2.png").stat().st_size > 0


def test_matched_reads_each_row_at_the_kv_kvpress_holds():
    """Linear between measured points; an end point counts within half a point of KV, not beyond."""
    points = [dict(budget=b, kv=kv, accuracy=a) for b, kv, a in ((0.5, 52.0, 80.0), (0.1, 13.4, 56.0))]
    assert cache_sweep.interpolated(points, 32.7) == pytest.approx(68.0)
    assert cache_sweep.interpolated(points, 13.2) == 56.0 and cache_sweep.interpolated(points, 52.3) == 80.0
    assert cache_sweep.interpolated(points, 12.8) is None and cache_sweep.interpolated(points, 53.0) is None
