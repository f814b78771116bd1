"""Training a pruner on every supported family: the data path through each family's own processor, and
`train/train.py` for two steps, stopped after one and resumed, on a tiny random model of each.

The processors of Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL and Mistral 3 need torchvision (their video
processors, or Pixtral's processor): those rows run where it is installed (`make test` with
`constraints-video.txt`, as `.ci/run` does) and are skipped, saying so, where it is not.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

import lvprune
from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPPress
from lvprune.data.collator import LlavaCollator
from lvprune.data.llava_format import encode_record, to_messages
from lvprune.data.records import normalize_record
from lvprune.families import backbone_for, supported, vision_mask
from lvprune_shapes.processor import TORCHVISION_PROCESSORS

ROOT = Path(__file__).resolve().parents[1]

from lvprune_shapes.assets import build_tiny_family_base, materialise_shapes, materialise_tiny_base

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def family_param(model_type):
    if model_type in TORCHVISION_PROCESSORS:
        return pytest.param(model_type, marks=[pytest.mark.torchvision, pytest.mark.skipif(
            not HAS_TORCHVISION, reason=f"the {model_type} processor needs torchvision")])
    return model_type


FAMILIES = [family_param(t) for t in sorted(supported())]
RECORDS = [
    {"id": "one", "images": ["wide.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"}]},
    {"id": "two", "images": ["wide.png", "tall.png"], "conversations": [
        {"from": "human", "value": "<image> and <image>: which is blue?"}, {"from": "gpt", "value": "blue circle"},
        {"from": "human", "value": "And the first?"}, {"from": "gpt", "value": "red"}]},
]
_BASES = {}


def tiny_base(model_type):
    if model_type not in _BASES:
        _BASES[model_type] = build_tiny_family_base(model_type)
    return _BASES[model_type]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (96, 64), "red").save(folder / "wide.png")
    Image.new("RGB", (48, 96), "blue").save(folder / "tall.png")
    return folder


@pytest.mark.parametrize("model_type", FAMILIES)
def test_labels_are_exactly_the_answers_through_the_familys_processor(model_type, images):
    model, processor = tiny_base(model_type)
    backbone = backbone_for(model.config)
    tokenizer = processor.tokenizer
    for record in RECORDS:
        example = encode_record(record, images, processor, backbone)
        answers = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        supervised = example["labels"][example["labels"] != -100]
        text = tokenizer.decode(supervised)
        # each answer in order, each followed by the family's end-of-turn token and nothing else
        for answer in answers:
            assert answer in text
            text = text[text.index(answer) + len(answer):]
        end = tokenizer.decode(supervised[-1:])
        assert end in (tokenizer.eos_token, "<|im_end|>")
        assert set(backbone.image_inputs) <= set(example)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_collated_batch_is_what_the_stock_model_takes_and_prunes(model_type, images):
    """Two records (one image; two images and two turns) collated: the stock forward accepts them (its own check
    that placeholders and features agree), and the pruned forward's loss over the kept rows equals the masked
    training forward's, the LVPruning removal seen through the family's real inputs."""
    model, processor = tiny_base(model_type)
    backbone = backbone_for(model.config)
    collator = LlavaCollator(processor.tokenizer.pad_token_id, padding_side="left", token_inputs=backbone.token_inputs)
    batch = collator([encode_record(r, images, processor, backbone) for r in RECORDS])
    vision = vision_mask(batch["input_ids"], backbone.vision_token_ids(model.config)).sum(-1)
    assert (vision > 0).all()
    with torch.no_grad():
        stock = model(**batch).loss
        torch.manual_seed(1)
        pruner = LVPrunerModel(LVPrunerConfig.from_base_config(model.config, num_heads=4, keep_ratios=[1, 1, 1]))
        trainer = lvprune.LVPruningForTraining(model, pruner).eval()
        try:
            masked = trainer(**batch).causal_loss
        finally:
            trainer.detach()
        with lvprune.pruning(model, pruner, keep_ratios=[1, 1, 1]):
            pruned = model(**batch).loss
    assert abs(masked.item() - stock.item()) < 1e-5 and abs(pruned.item() - stock.item()) < 1e-5


# ------------------------------------------------------------------------------ train/train.py on each family


def launch(out: Path, assets: Path, model_type: str, *extra) -> dict:
    args = ["--config", "configs/tiny-cpu.yaml", "--base_model", f"tiny-random-{model_type}",
            "--assets_dir", str(assets), "--synthetic_samples", "8", "--output_dir", str(out), "--max_steps", "2",
            "--save_steps", "1", "--evaluate", "none", *extra]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/single.yaml"), "train/train.py", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
def test_two_steps_and_a_resume_give_the_uninterrupted_pruner_which_then_prunes(model_type, tmp_path):
    assets = tmp_path / "assets"
    whole = launch(tmp_path / "whole", assets, model_type)
    stopped = launch(tmp_path / "resumed", assets, model_type, "--stop_after_steps", "1")
    assert stopped["step"] == 1 and (tmp_path / "resumed" / "checkpoint-1").is_dir()
    resumed = launch(tmp_path / "resumed", assets, model_type, "--resume_from_checkpoint", "latest")
    assert whole["finished"] and resumed["finished"] and resumed["step"] == 2
    ours, theirs = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("resumed", "whole"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs after the resume"
    initial = LVPrunerModel(LVPrunerConfig.from_pretrained(tmp_path / "whole" / "final"))
    assert any(not torch.equal(p, ours[n]) for n, p in initial.state_dict().items() if n in ours)

    base_dir = materialise_tiny_base(assets, model_type)
    model = lvprune.load_pruned_model(base_dir, tmp_path / "whole" / "final", press=PLPHPPress())
    assert model.lvprune.pruner.config.base_model_type == model_type
    json_path, image_folder = materialise_shapes(assets, 8)
    record = normalize_record(json.loads(Path(json_path).read_text())[0], 0)
    processor = AutoProcessor.from_pretrained(base_dir)
    prompt = to_messages(record["conversations"][:1], [Image.open(image_folder / record["images"][0]).convert("RGB")])
    inputs = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    model.generate(**inputs, max_new_tokens=3, do_sample=False)
    vision = model.pruning_stats.layers[0].vision_tokens[0]
    assert model.pruning_stats.layers[-1].vision_tokens[0] == round(0.1 * vision)

