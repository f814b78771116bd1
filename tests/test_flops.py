"""The analytic cost model against FlopCounterMode, the paper's figures, hand counts and the CLI.

FlopCounterMode counts matrix products only (mm/addmm/bmm/convolution/sdpa), as lvprune.flops
does. The CPU SDPA kernel is not among the ops it knows, so the stock models run with eager
attention, whose two matmuls per layer it counts over the full score square, as the analytic
count does. The stock vision tower also runs the encoder layers past ``vision_feature_layer``;
their counted FLOPs are taken off before comparing, since the analytic count leaves them out.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

from lvprune import cli
from lvprune.flops import (
    decision_module_flops,
    estimate_cost,
    vision_layers_used,
    vision_tokens_per_image,
)

LLAVA_7B = Path(__file__).resolve().parents[1] / "configs" / "models" / "llava-1.5-7b"
PAPER_STAGES = (1, 8, 16)
KEYS = ["prefill_tflops", "prefill_tflops_unpruned", "decision_tflops", "kv_cache_bytes",
        "kv_cache_bytes_unpruned"]


def tiny_llava_config(strategy="default", feature_layer=-2, kv_heads=2, head_dim=8):
    """A LLaVA with 16 patches per image, a 3-layer CLIP, a 2-layer GQA Llama, eager attention."""
    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48,
                           num_hidden_layers=3, num_attention_heads=4, image_size=28, patch_size=7,
                           projection_dim=16),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=head_dim,
                         vocab_size=120, max_position_embeddings=256),
        image_token_index=100, vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy, image_seq_length=16 if strategy == "default" else 17,
    )


@pytest.fixture(scope="session")
def config_7b():
    return AutoConfig.from_pretrained(LLAVA_7B, local_files_only=True)


def counted_flops(config, images, text_tokens):
    """FlopCounterMode's FLOPs per part of a stock prefill, the unused vision layers taken off."""
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    n_vision = vision_tokens_per_image(config)
    ids = torch.randint(0, 99, (1, images * n_vision + text_tokens))
    ids[0, 1 : 1 + images * n_vision] = config.image_token_id  # a BOS-like token, then the images
    pixels = torch.randn(images, 3, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(input_ids=ids, pixel_values=pixels, logits_to_keep=1)
    totals = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = "LlavaForConditionalGeneration"
    unused = sum(totals[f"{root}.model.vision_tower.encoder.layers.{i}"]
                 for i in range(vision_layers_used(config), config.vision_config.num_hidden_layers))
    return {
        "vision_tower": totals[f"{root}.model.vision_tower"] - unused,
        "projector": totals[f"{root}.model.multi_modal_projector"],
        "decoder": totals[f"{root}.model.language_model"],
        "lm_head": totals[f"{root}.lm_head"],
        "total": totals["Global"] - unused,
    }


@pytest.mark.parametrize(
    "strategy, feature_layer, kv_heads, head_dim, images",
    [("default", -2, 2, 8, 1), ("full", -1, 4, 16, 2), ("default", 1, 1, 16, 3)],
)
def test_matches_flop_counter_on_stock_llava(strategy, feature_layer, kv_heads, head_dim, images):
    config = tiny_llava_config(strategy, feature_layer, kv_heads, head_dim)
    counted = counted_flops(config, images, text_tokens=7)
    estimate = estimate_cost(config, images=images, text_tokens=7)
    for part in ("vision_tower", "projector", "decoder", "lm_head"):
        assert estimate.breakdown[part] == counted[part], part
    assert estimate.prefill_tflops * 1e12 == pytest.approx(counted["total"], rel=1e-12)
    assert estimate.decision_tflops == 0.0


class CrossAttentionBlock(nn.Module):
    """The decision module's block as the method describes it, written out for counting."""

    def __init__(self, width, heads=8):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.SiLU(),
                                 nn.Linear(2 * width, width), nn.LayerNorm(width))

    def split(self, x):
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, vision, text):
        q, k, v = self.split(self.q(vision)), self.split(self.k(text)), self.split(self.v(text))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        out = (scores @ v + q).transpose(1, 2).flatten(2)
        return out + self.ffn(out)


def test_decision_module_count_matches_a_counted_reference():
    width, n_vision, n_text = 64, 11, 5
    blocks = nn.ModuleList([CrossAttentionBlock(width), CrossAttentionBlock(width)])
    head = nn.Linear(width, 2)
    vision, text = torch.randn(1, n_vision, width), torch.randn(1, n_text, width)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for block in blocks:
            vision = block(vision, text)
        head(vision)
    assert decision_module_flops(width, n_vision, n_text) == counter.get_total_flops()


def test_llava_7b_unpruned_is_within_5_percent_of_the_paper(config_7b):
    estimate = estimate_cost(config_7b, images=1, text_tokens=30)
    assert estimate.prefill_tflops == pytest.approx(8.38, rel=0.05)
    assert estimate.prefill_tflops == estimate.prefill_tflops_unpruned
    # keys and values of 32 layers x 32 heads x 128 dims x 606 tokens in float16
    assert estimate.kv_cache_bytes == estimate.kv_cache_bytes_unpruned == 2 * 32 * 32 * 128 * 606 * 2


@pytest.mark.parametrize("ratios, paper", [((0.6, 0.4, 0.2), 3.97), ((0.5, 0.3, 0.1), 3.18),
                                           ((0.45, 0.25, 0.05), 2.79)])
def test_llava_7b_pruned_is_within_5_percent_of_the_paper(config_7b, ratios, paper):
    estimate = estimate_cost(config_7b, after_layers=PAPER_STAGES, keep_ratios=ratios)
    assert estimate.prefill_tflops == pytest.approx(paper, rel=0.05)


def test_stage_schedule_by_hand(config_7b):
    estimate = estimate_cost(config_7b, after_layers=PAPER_STAGES, keep_ratios=(0.5, 0.3, 0.1))
    # round(0.5 * 576) = 288, round(0.3 * 576) = 173, round(0.1 * 576) = 58, plus 30 text tokens
    assert estimate.tokens_per_layer == (606,) + (318,) * 7 + (203,) * 8 + (88,) * 16
    # stage queries: 576, 288, 173 vision tokens; 30 text keys
    expected = sum(decision_module_flops(4096, n, 30) for n in (576, 288, 173))
    assert estimate.decision_tflops * 1e12 == expected


def test_plphp_changes_kv_bytes_not_prefill_flops(config_7b):
    stages = dict(after_layers=PAPER_STAGES, keep_ratios=(0.5, 0.3, 0.1))
    lv_only = estimate_cost(config_7b, **stages)
    both = estimate_cost(config_7b, **stages, plphp=(0.4, 0.3), plphp_start_layer=0)
    assert both.prefill_tflops == lv_only.prefill_tflops
    # per layer ceil(0.4 * present) vision tokens: 231, 116 (x7), 70 (x8), 24 (x16), plus 30 text
    tokens = 261 + 146 * 7 + 100 * 8 + 54 * 16
    assert both.kv_cache_bytes == tokens * 2 * 32 * 128 * 2
    late = estimate_cost(config_7b, **stages, plphp=(0.4, 0.3), plphp_start_layer=16)
    assert late.kv_cache_bytes == (606 + 318 * 7 + 203 * 8 + 54 * 16) * 2 * 32 * 128 * 2


def test_costs_fall_as_more_is_pruned(config_7b):
    ladders = [(1.0, 1.0, 1.0), (0.6, 0.4, 0.2), (0.5, 0.3, 0.1), (0.45, 0.25, 0.05)]
    runs = [estimate_cost(config_7b, after_layers=PAPER_STAGES, keep_ratios=r) for r in ladders]
    for looser, tighter in zip(runs, runs[1:]):
        assert tighter.prefill_tflops < looser.prefill_tflops
        assert tighter.kv_cache_bytes < looser.kv_cache_bytes
        assert tighter.decision_tflops < looser.decision_tflops
    keep_all = runs[0]  # ratios 1.0: the unpruned model plus the modules' own cost
    assert keep_all.prefill_tflops == pytest.approx(keep_all.prefill_tflops_unpruned
                                                    + keep_all.decision_tflops)
    assert keep_all.kv_cache_bytes == keep_all.kv_cache_bytes_unpruned
    rates = [estimate_cost(config_7b, plphp=(r, 0.3)).kv_cache_bytes for r in (1.0, 0.5, 0.3, 0.0)]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == 4


def test_dtype_bytes_from_config_or_override(config_7b):
    fp16 = estimate_cost(config_7b)
    assert estimate_cost(config_7b, dtype_bytes=4).kv_cache_bytes == 2 * fp16.kv_cache_bytes
    tiny = tiny_llava_config()
    tiny.text_config.dtype = torch.float32
    per_token = 2 * 2 * 2 * 8 * 4  # k and v, 2 layers, 2 kv heads, head_dim 8, float32
    assert estimate_cost(tiny, text_tokens=4).kv_cache_bytes == per_token * (16 + 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(after_layers=(1, 8), keep_ratios=(0.5,)), "one entry per stage"),
    (dict(after_layers=(1,), keep_ratios=(0.0,)), r"0.0 is outside \(0, 1\]"),
    (dict(after_layers=(1,), keep_ratios=(1.2,)), r"1.2 is outside \(0, 1\]"),
    (dict(after_layers=(1, 8), keep_ratios=(0.3, 0.5)), "must be non-increasing"),
    (dict(after_layers=(8, 1), keep_ratios=(0.5, 0.3)), "must be strictly increasing"),
    (dict(after_layers=(33,), keep_ratios=(0.5,)), r"layer 33 .*outside the model.*\[1, 31\]"),
    (dict(after_layers=(32,), keep_ratios=(0.5,)), r"layer 32 .*outside the model"),  # after the last layer
    (dict(after_layers=(0,), keep_ratios=(0.5,)), r"layer 0 .*outside the model"),
    (dict(plphp=(1.5, 0.3)), r"r=1.5 is outside \[0, 1\]"),
    (dict(plphp=(0.5, -0.1)), "delta_r=-0.1"),
    (dict(plphp=(0.5, 0.3), plphp_start_layer=40), "plphp_start_layer=40 is outside"),
    (dict(images=-1), "images=-1"),
    (dict(images=0, text_tokens=0), "prompt is empty"),
])
def test_bad_input_names_the_bad_value(config_7b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_cost(config_7b, **kwargs)


def test_non_llava_config_is_refused():
    with pytest.raises(ValueError, match="LlamaConfig is not a LLaVA config"):
        estimate_cost(tiny_llava_config().text_config)


def run_cli(capsys, *args):
    code = cli.main(["flops", str(LLAVA_7B), *args])
    return code, json.loads(capsys.readouterr().out)


def test_cli_prints_the_library_estimate(capsys, config_7b):
    code, out = run_cli(capsys, "--text-tokens", "30", "--images", "1", "--keep-ratios", "0.5", "0.3",
                        "0.1", "--plphp", "0.4", "0.3", "--dtype-bytes", "4")
    assert code == 0
    assert list(out)[: len(KEYS)] == KEYS
    expected = estimate_cost(config_7b, after_layers=PAPER_STAGES, keep_ratios=(0.5, 0.3, 0.1),
                             plphp=(0.4, 0.3), dtype_bytes=4)
    assert {k: out[k] for k in KEYS} == {k: getattr(expected, k) for k in KEYS}


def test_cli_defaults_to_unpruned(capsys, config_7b):
    _, out = run_cli(capsys)
    assert out["prefill_tflops"] == out["prefill_tflops_unpruned"] == estimate_cost(config_7b).prefill_tflops


@pytest.mark.parametrize("args, message", [
    (["--keep-ratios", "1.5"], r"argument --keep-ratios: 1.5 is outside \(0, 1\]"),
    (["--keep-ratios", "0.5"], "without --after-layers"),
    (["--keep-ratios", "0.5", "0.6", "0.1"], "must be non-increasing"),
    (["--keep-ratios", "0.5", "0.3", "--after-layers", "1", "8", "16"], "one entry per stage"),
    (["--keep-ratios", "0.5", "--after-layers", "40"], "layer 40 .*outside the model"),
])
def test_cli_reports_bad_input(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["flops", str(LLAVA_7B), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lvprune flops: error:" in err
    assert re.search(message, err)


def test_cli_refuses_a_folder_without_config(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["flops", str(tmp_path)])
    assert "has no config.json" in capsys.readouterr().err
