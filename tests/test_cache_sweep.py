"""benchmarks/cache_sweep.py's protocols on the shipped reference base: decoding from the prefilled cache with
nothing pruned answers as the stock model does on the whole prompt, and a press keeping every slot changes
nothing."""

import sys
from pathlib import Path

import pytest
import torch

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
