"""The analytic cost model against FlopCounterMode, the paper's figures, hand counts and the CLI.

FlopCounterMode counts matrix products only (mm/addmm/bmm/convolution/sdpa), as lvprune.flops
does. The CPU SDPA kernel is not among the ops it knows, so the stock models run with eager
attention, whose two matmuls per layer it counts over the full score square, as the analytic
count does. The stock vision tower also runs the encoder layers past ``vision_feature_layer``;
their counted FLOPs are taken off before comparing, since the analytic count leaves them out.

The other families are checked the same way on tiny random configs built with
``AutoModelForImageTextToText.from_config``: each part must match exactly (Qwen's patch merger sits
inside ``model.visual`` and counts as the projector), and the vision tokens of each image must be
what the stock ``get_image_features`` returns. The tiles or patch grids fed to the stock models come
from transformers' own helpers (``image_size_to_num_patches``, the image processors), so the
image-size arithmetic is checked against them too, on the shipped 7B configs as well.
"""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    Gemma3Config,
    InternVLConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaOnevisionConfig,
    Mistral3Config,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from lvprune import cli
from lvprune.families.internvl import internvl_tiles
from lvprune.families.mistral3 import PIXTRAL_LONGEST_EDGE, pixtral_token_grid
from lvprune.families.qwen2_vl import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, qwen_patch_grid
from lvprune.flops import (
    decision_module_flops,
    estimate_cost,
    image_input,
    supported_model_types,
    vision_layers_used,
    vision_tokens_per_image,
)

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"
LLAVA_7B = MODELS / "llava-1.5-7b"
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
    (dict(after_layers=(33,), keep_ratios=(0.5,)), r"layer 33 .*outside the model.*\[0, 31\]"),
    (dict(after_layers=(32,), keep_ratios=(0.5,)), r"layer 32 .*outside the model"),  # after the last layer
    (dict(after_layers=(-1,), keep_ratios=(0.5,)), r"layer -1 .*outside the model"),
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
    code = cli.main(["flops", "--model_dir", str(LLAVA_7B), *args])
    return code, json.loads(capsys.readouterr().out)


def test_cli_prints_the_library_estimate(capsys, config_7b):
    code, out = run_cli(capsys, "--text_tokens", "30", "--images", "1", "--keep_ratios", "0.5", "0.3",
                        "0.1", "--plphp_r", "0.4", "--plphp_delta_r", "0.3", "--dtype_bytes", "4")
    assert code == 0
    assert list(out)[: len(KEYS)] == KEYS
    expected = estimate_cost(config_7b, after_layers=PAPER_STAGES, keep_ratios=(0.5, 0.3, 0.1),
                             plphp=(0.4, 0.3), dtype_bytes=4)
    assert {k: out[k] for k in KEYS} == {k: getattr(expected, k) for k in KEYS}


def test_cli_defaults_to_unpruned(capsys, config_7b):
    _, out = run_cli(capsys)
    assert out["prefill_tflops"] == out["prefill_tflops_unpruned"] == estimate_cost(config_7b).prefill_tflops


@pytest.mark.parametrize("args, message", [
    (["--keep_ratios", "1.5"], r"keep_ratios=\[1.5\] must each be in \(0, 1\]"),
    (["--keep_ratios", "0.5"], "without --after_layers"),
    (["--keep_ratios", "0.5", "0.6", "0.1"], "must be non-increasing"),
    (["--keep_ratios", "0.5", "0.3", "--after_layers", "1", "8", "16"], "one entry per stage"),
    (["--keep_ratios", "0.5", "--after_layers", "40"], "layer 40 .*outside the model"),
    (["--plphp_r", "0.4", "--plphp_start_layer", "40"], "plphp_start_layer=40 is outside"),
    (["--image_size", "12xab"], "image_size='12xab' is not WIDTHxHEIGHT"),
])
def test_cli_reports_bad_input(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["flops", "--model_dir", str(LLAVA_7B), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lvprune flops: error:" in err
    assert re.search(message, err)


def test_cli_refuses_a_folder_without_config(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["flops", "--model_dir", str(tmp_path)])
    assert "has no config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- other families

IMAGE, VIDEO, IMAGE_START, IMAGE_END, IMG_BREAK, IMG_END = 150, 151, 152, 153, 11, 12
TINY_TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=160, max_position_embeddings=1024, bos_token_id=1,
                 eos_token_id=2)
TINY_MROPE = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)  # head_dim 16
TINY_CLIP = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, image_size=28, patch_size=7)
TINY_TILE = 28  # 4 x 4 patches of 7 px
SHIPPED = {  # folder: (typical image size, its vision tokens, sizes the config must carry)
    "llava-v1.6-vicuna-7b": ((672, 672), 2928, dict(hidden=4096, layers=32, heads=32, kv_heads=32,
                                                     intermediate=11008, vocab=32064)),
    "llava-onevision-qwen2-7b-ov": ((768, 768), 3699, dict(hidden=3584, layers=28, heads=28, kv_heads=4,
                                                            intermediate=18944, vocab=152128)),
    "qwen2-vl-7b-instruct": ((448, 448), 256, dict(hidden=3584, layers=28, heads=28, kv_heads=4,
                                                    intermediate=18944, vocab=152064)),
}
# LVPruning's stages after layers 1, 8, 16 of 32, scaled to 28 layers as docs/costs.md does
STAGES = {32: PAPER_STAGES, 28: (1, 7, 14)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(family):
    """A tiny random config of ``family``: 28 px tiles or 14 px patches, 2-4 vision layers, 2 text layers."""
    if family == "llava_next":  # CLIP; LLaVA-NeXT-7B's pinpoints scaled from 336 to 28 px tiles
        return LlavaNextConfig(
            vision_config=dict(model_type="clip_vision_model", num_hidden_layers=3, projection_dim=16, **TINY_CLIP),
            text_config=dict(model_type="llama", head_dim=8, **TINY_TEXT), image_token_index=IMAGE,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
            image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]])
    if family == "llava_onevision":  # SigLIP without head; a 6 x 6 pinpoint grid as OneVision-7B's
        return LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", num_hidden_layers=2, vision_use_head=False,
                               **TINY_CLIP),
            text_config=dict(model_type="qwen2", **TINY_TEXT), image_token_index=IMAGE, video_token_index=VIDEO,
            image_grid_pinpoints=[[h, w] for h in range(28, 169, 28) for w in range(28, 169, 28)])
    qwen_ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=IMAGE_START,
                    vision_end_token_id=IMAGE_END)
    if family == "qwen2_vl":
        return Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2),
                             text_config=dict(rope_parameters=TINY_MROPE, **TINY_TEXT), **qwen_ids)
    if family == "qwen2_5_vl":  # windows of 56 px = 2 x 2 merged tokens; blocks 1 and 3 attend fully
        return Qwen2_5_VLConfig(
            vision_config=dict(depth=4, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=4,
                               window_size=56, fullatt_block_indexes=[1, 3]),
            text_config=dict(rope_parameters=TINY_MROPE, **TINY_TEXT), **qwen_ids)
    if family == "mistral3":
        return Mistral3Config(
            vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, head_dim=8, patch_size=14, image_size=1540),
            text_config=dict(model_type="mistral", head_dim=16, **TINY_TEXT), image_token_index=IMAGE)
    if family == "internvl":
        return InternVLConfig(
            vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                               image_size=[28, 28], patch_size=[7, 7]),
            text_config=dict(model_type="qwen2", **TINY_TEXT), image_token_id=IMAGE)
    raise AssertionError(family)


def stock_vision_inputs(config, size, images):
    """The stock model's image inputs for ``images`` images of ``size`` (height, width), tiled or
    resized by transformers' own helpers (not lvprune's)."""
    family, (height, width) = config.model_type, size
    if family in ("llava_next", "llava_onevision"):
        multi = family == "llava_onevision" and images > 1  # the processor's rule: base tile only
        tiles = 1 if multi else image_size_to_num_patches(list(size), config.image_grid_pinpoints, TINY_TILE)
        inputs = dict(pixel_values=torch.randn(images, tiles, 3, TINY_TILE, TINY_TILE),
                      image_sizes=torch.tensor([list(size)] * images))
        if family == "llava_onevision":
            inputs["batch_num_images"] = torch.tensor([images])
        return inputs
    if family in ("qwen2_vl", "qwen2_5_vl"):
        processor = Qwen2VLImageProcessorPil(size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS})
        out = processor(images=[np.zeros((height, width, 3), dtype=np.uint8)] * images, return_tensors="pt")
        return dict(pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
    if family == "mistral3":
        resized = get_resize_output_image_size(np.zeros((height, width, 3), dtype=np.uint8),
                                               size=(PIXTRAL_LONGEST_EDGE,) * 2, patch_size=(28, 28))
        return dict(pixel_values=torch.randn(images, 3, *resized), image_sizes=torch.tensor([list(resized)] * images))
    if family == "internvl":
        processor = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12,
                                             size={"height": TINY_TILE, "width": TINY_TILE})
        tiles = processor.get_number_of_image_patches(height, width)
        return dict(pixel_values=torch.randn(images * tiles, 3, TINY_TILE, TINY_TILE))
    raise AssertionError(family)


def stock_tokens_per_image(model, inputs, images):
    """Vision tokens each image becomes in the stock ``get_image_features``."""
    with torch.no_grad():
        features = model.model.get_image_features(**inputs).pooler_output
    if isinstance(features, torch.Tensor):  # InternVL: (tiles, tokens per tile, width) for all images
        return [features.shape[0] * features.shape[1] // images] * images
    return [f.shape[0] for f in features]


def prompt_ids(config, inputs, n_vision, images, text_tokens=7):
    """A BOS-like token, each image's placeholders (Qwen: between vision start and end; Mistral3: a
    row break after each row of the resized image, the last an [IMG_END]), then ``text_tokens``."""
    ids = [1]
    for index in range(images):
        if config.model_type == "mistral3":
            rows, cols = (int(x) // 28 for x in inputs["image_sizes"][index])
            for row in range(rows):
                ids += [IMAGE] * cols + [IMG_END if row == rows - 1 else IMG_BREAK]
        elif config.model_type in ("qwen2_vl", "qwen2_5_vl"):
            ids += [IMAGE_START] + [IMAGE] * n_vision + [IMAGE_END]
        else:
            ids += [IMAGE] * n_vision
    return torch.tensor([ids + [3 + i for i in range(text_tokens)]])


TOWER = {"llava_next": "model.vision_tower", "llava_onevision": "model.vision_tower", "qwen2_vl": "model.visual",
         "qwen2_5_vl": "model.visual", "mistral3": "model.vision_tower", "internvl": "model.vision_tower"}
PROJECTOR = {"qwen2_vl": "model.visual.merger", "qwen2_5_vl": "model.visual.merger"}  # else multi_modal_projector


@pytest.mark.parametrize("family, size, images", [
    ("llava_next", (50, 70), 1),  # wide: a 2 x 2 grid, its 8 x 8 features unpadded to 6 x 8
    ("llava_next", (70, 50), 2),  # tall (8 x 6), two images
    ("llava_onevision", (50, 70), 1),
    ("llava_onevision", (168, 168), 1),  # 6 x 6 tiles > 1.1 * 9: grid features resized down
    ("llava_onevision", (50, 70), 2),  # several images: base tile + newline each
    ("qwen2_vl", (56, 84), 1),
    ("qwen2_vl", (100, 60), 2),  # smart_resize to 112 x 56
    ("qwen2_5_vl", (84, 140), 1),  # 3 x 5 merged tokens: windows of 2 x 2, 2 x 1, 1 x 2, 1 x 1
    ("qwen2_5_vl", (250, 120), 2),
    ("mistral3", (56, 84), 1),
    ("mistral3", (70, 100), 2),  # padded to 84 x 112; both images attend as one masked sequence
    ("internvl", (28, 28), 1),  # one tile, no thumbnail
    ("internvl", (56, 84), 2),  # 3 x 2 tiles + thumbnail
])
def test_matches_flop_counter_on_stock_models(family, size, images):
    config = tiny_config(family)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.set_attn_implementation("eager")
    inputs = stock_vision_inputs(config, size, images)
    n_vision = image_input(config, size, images).tokens_per_image
    assert stock_tokens_per_image(model, inputs, images) == [n_vision] * images
    ids = prompt_ids(config, inputs, n_vision, images)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        inputs["mm_token_type_ids"] = (ids == IMAGE).int()
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(input_ids=ids, logits_to_keep=1, **inputs)
    totals = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    unused = 0
    if family in ("llava_next", "llava_onevision"):
        unused = sum(totals[f"{root}.model.vision_tower.encoder.layers.{i}"]
                     for i in range(vision_layers_used(config), config.vision_config.num_hidden_layers))
    projector = totals[f"{root}.{PROJECTOR.get(family, 'model.multi_modal_projector')}"]
    inside = projector if family in PROJECTOR else 0  # Qwen's merger is part of model.visual
    breaks = int(((ids == IMG_BREAK) | (ids == IMG_END)).sum()) if family == "mistral3" else 0
    text_tokens = int((ids != IMAGE).sum()) - breaks  # the estimate adds Mistral3's row breaks itself
    estimate = estimate_cost(config, images=images, text_tokens=text_tokens, image_size=size)
    assert estimate.vision_tokens == images * n_vision
    assert estimate.text_tokens == text_tokens + breaks
    assert estimate.breakdown["vision_tower"] == totals[f"{root}.{TOWER[family]}"] - inside - unused
    assert estimate.breakdown["projector"] == projector
    assert estimate.breakdown["decoder"] == totals[f"{root}.model.language_model"]
    assert estimate.breakdown["lm_head"] == totals[f"{root}.lm_head"]
    assert estimate.prefill_tflops * 1e12 == pytest.approx(totals["Global"] - unused, rel=1e-12)


def test_onevision_resizes_a_big_grid_by_hand():
    # 168 x 168 on 28 px tiles: base 4 x 4, grid 6 x 6 tiles = 24 x 24 features; sqrt(576 / (9 * 16)) = 2 > 1.1
    # resizes them to 12 x 12, plus 12 newlines
    assert vision_tokens_per_image(tiny_config("llava_onevision"), (168, 168)) == 16 + 12 * 12 + 12
    assert image_input(tiny_config("llava_onevision"), (168, 168), images=2).tokens_per_image == 16 + 1


def shipped_config(name):
    return AutoConfig.from_pretrained(MODELS / name, local_files_only=True)


def processor_tokens(config, size):
    """Vision tokens the stock processor's ``_get_number_of_features`` gives one image (no tokenizer needed)."""
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    if config.model_type == "llava_next":
        processor = LlavaNextProcessor.__new__(LlavaNextProcessor)
        processor.patch_size, processor.num_additional_image_tokens = patch, 1  # CLIP's CLS
    else:
        processor = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
        processor.num_image_tokens, processor.vision_aspect_ratio = (tile // patch) ** 2, config.vision_aspect_ratio
    processor.image_processor = SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints)
    tokens = processor._get_number_of_features(*size, tile, tile)
    return tokens - (config.vision_feature_select_strategy == "default")


IMAGE_SIZES = [(672, 672), (768, 768), (480, 640), (640, 480), (1080, 1920), (300, 1000), (1000, 300),
               (2304, 2304), (3000, 500), (100, 100), (336, 336), (4000, 3000)]


@pytest.mark.parametrize("name", ["llava-v1.6-vicuna-7b", "llava-onevision-qwen2-7b-ov"])
def test_anyres_tokens_match_the_processor_on_the_7b_configs(name):
    config = shipped_config(name)
    for size in IMAGE_SIZES:
        assert vision_tokens_per_image(config, size) == processor_tokens(config, size), size


def test_qwen_grid_matches_smart_resize_and_the_image_processor():
    config = shipped_config("qwen2-vl-7b-instruct")
    for height, width in IMAGE_SIZES + [(20, 30), (28, 5000), (8000, 8000)]:
        expected = smart_resize(height, width, 28, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
        assert qwen_patch_grid(config, (height, width)) == (expected[0] // 14, expected[1] // 14)
    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS})
    for size in [(448, 448), (480, 640)]:
        grid = processor(images=[np.zeros((*size, 3), dtype=np.uint8)], return_tensors="pt")["image_grid_thw"]
        assert vision_tokens_per_image(config, size) == int(grid.prod()) // 4


def test_internvl_tiles_and_pixtral_grid_match_the_processors():
    processor = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12,
                                         size={"height": 448, "width": 448})
    mistral = tiny_config("mistral3")
    for height, width in IMAGE_SIZES:
        assert internvl_tiles((height, width), 448) == processor.get_number_of_image_patches(height, width)
        resized = get_resize_output_image_size(np.zeros((height, width, 3), dtype=np.uint8),
                                               size=(PIXTRAL_LONGEST_EDGE,) * 2, patch_size=(28, 28))
        assert pixtral_token_grid(mistral, (height, width)) == (resized[0] // 28, resized[1] // 28)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_7b_configs_load_with_their_sizes_and_typical_tokens(name):
    size, tokens, sizes = SHIPPED[name]
    config = shipped_config(name)
    text = config.get_text_config()
    assert dict(hidden=text.hidden_size, layers=text.num_hidden_layers, heads=text.num_attention_heads,
                kv_heads=text.num_key_value_heads, intermediate=text.intermediate_size,
                vocab=text.vocab_size) == sizes
    unpruned = estimate_cost(config)
    assert unpruned.image_size == size and unpruned.vision_tokens_per_image == tokens
    assert unpruned.tokens_per_layer == (tokens + 30,) * text.num_hidden_layers
    head_dim = text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2  # k and v in 16 bits
    assert unpruned.kv_cache_bytes == per_token * (tokens + 30)
    pruned = estimate_cost(config, after_layers=STAGES[text.num_hidden_layers], keep_ratios=(0.5, 0.3, 0.1))
    assert pruned.prefill_tflops < unpruned.prefill_tflops  # the vision tower is not pruned: Qwen2-VL 0.55x
    assert 0.25 < pruned.breakdown["decoder"] / unpruned.breakdown["decoder"] < 0.5
    # the decoder dominates: about 2 x its matrix parameters per token, plus attention
    decoder = unpruned.breakdown["decoder"] / (2 * (tokens + 30) * text.num_hidden_layers)
    per_layer = text.hidden_size * (2 * text.hidden_size + 2 * text.num_key_value_heads * head_dim
                                    + 3 * text.intermediate_size)
    assert 1.0 < decoder / per_layer < 1.3


def test_shipped_vision_towers():
    next_7b, onevision, qwen = (shipped_config(name) for name in SHIPPED)
    clip = next_7b.vision_config
    assert (clip.model_type, clip.hidden_size, clip.num_hidden_layers, clip.image_size, clip.patch_size,
            next_7b.image_token_index) == ("clip_vision_model", 1024, 24, 336, 14, 32000)
    assert next_7b.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    siglip = onevision.vision_config
    assert (siglip.hidden_size, siglip.intermediate_size, siglip.num_attention_heads, siglip.patch_size,
            siglip.image_size, siglip.vision_use_head) == (1152, 4304, 16, 14, 384, False)
    # the Hub file drops SigLIP-so400m's 27th layer (unused) and takes the last of the remaining 26
    assert (siglip.num_hidden_layers, onevision.vision_feature_layer) == (26, -1)
    assert onevision.image_grid_pinpoints == [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]
    vit = qwen.vision_config
    assert (vit.depth, vit.embed_dim, vit.num_heads, vit.patch_size, vit.spatial_merge_size, vit.mlp_ratio,
            vit.hidden_size) == (32, 1280, 16, 14, 2, 4, 3584)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "qwen2_vl", "mistral3", "internvl"])
def test_image_size_changes_vision_tokens(family):
    config = tiny_config(family)
    small, big = (estimate_cost(config, image_size=size) for size in [(28, 28), (160, 240)])
    assert small.vision_tokens < big.vision_tokens and small.prefill_tflops < big.prefill_tflops
    assert big.image_size == (160, 240)


def test_llava_1_5_sees_any_image_as_its_tile(config_7b):
    default, other = estimate_cost(config_7b), estimate_cost(config_7b, image_size=(720, 1280))
    assert default.image_size == (336, 336) and default.vision_tokens_per_image == 576
    assert other.image_size == (720, 1280) and other.prefill_tflops == default.prefill_tflops


@pytest.mark.parametrize("config", [Gemma3Config(), tiny_llava_config().text_config])
def test_unknown_model_types_name_the_supported_ones(config):
    with pytest.raises(ValueError) as error:
        estimate_cost(config)
    assert all(model_type in str(error.value) for model_type in supported_model_types())


def test_bad_image_size_is_refused(config_7b):
    with pytest.raises(ValueError, match="image_size"):
        estimate_cost(config_7b, image_size=(0, 336))


@pytest.mark.parametrize("name, image_size, width, height, tokens", [
    ("llava-1.5-7b", None, 336, 336, 576),
    ("llava-1.5-7b", "1280x720", 1280, 720, 576),  # resized and cropped to its tile all the same
    ("llava-v1.6-vicuna-7b", None, 672, 672, 2928),
    ("llava-v1.6-vicuna-7b", "1008x336", 1008, 336, 24 * 24 + 24 * 72 + 24),  # a 1 x 3 grid of tiles
    ("llava-onevision-qwen2-7b-ov", None, 768, 768, 3699),
    ("qwen2-vl-7b-instruct", "448", 448, 448, 256),
    ("qwen2-vl-7b-instruct", "1280x720", 1280, 720, 46 * 26),  # smart_resize to 1288 x 728
])
def test_cli_reports_the_image_size_and_vision_tokens(capsys, name, image_size, width, height, tokens):
    args = ["--image_size", image_size] if image_size else []
    assert cli.main(["flops", "--model_dir", str(MODELS / name), "--text_tokens", "20", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_size"] == {"width": width, "height": height}
    assert out["vision_tokens_per_image"] == out["vision_tokens"] == tokens
    assert out["text_tokens"] == 20
    expected = estimate_cost(shipped_config(name), text_tokens=20, image_size=(height, width))
    assert {k: out[k] for k in KEYS} == {k: getattr(expected, k) for k in KEYS}


def test_cli_refuses_bad_image_size_and_unknown_model_types(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["flops", "--model_dir", str(LLAVA_7B), "--image_size", "672by672"])
    assert "image_size='672by672' is not WIDTHxHEIGHT" in capsys.readouterr().err
    Gemma3Config().save_pretrained(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["flops", "--model_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "model_type 'gemma3'" in err and all(model_type in err for model_type in supported_model_types())
