"""lmms-eval runs an lvprune model (`--model lvprune`): the shapes test split as a local lmms-eval task, scored by
lmms-eval, equals lvprune's own accuracy for the same setting; log-likelihoods are the masked training forward's.

lmms-eval needs torchvision: these tests run where it is installed (CI's torchvision pass) and are skipped,
saying so, elsewhere.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.torchvision, pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed (it needs torchvision)")]

from lvprune import LVPrunerConfig, LVPrunerModel, LVPruningForTraining, load_pruned_model  # noqa: E402
from lvprune.bench.answers import answer_questions  # noqa: E402
from lvprune.bench.metrics import exact_match  # noqa: E402
from lvprune.bench.questions import load_questions  # noqa: E402
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset  # noqa: E402
from lvprune_shapes.reference import load_reference  # noqa: E402
from lvprune_shapes.reference.cache import shipped_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tests" / "lmms_eval_task"
SETTING = dict(keep_ratios="0.5:0.3:0.1", plphp_r="0.5", plphp_delta_r="0.3")
TASK_YAML = """task: shapes_lvprune
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test_json}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    base = shipped_reference()  # it answers (94%), so right and wrong answers are both compared
    torch.manual_seed(3)
    model, _ = load_reference(base)
    LVPrunerModel(LVPrunerConfig.from_base_config(model.config, num_heads=4)).save_pretrained(root / "pruner")
    size = model.config.vision_config.image_size
    paths = make_shapes_dataset(root / "data", {"test": 24}, ShapesConfig(image_size=size, seed=5))
    tasks = root / "tasks"
    tasks.mkdir()
    shutil.copy(TASK / "utils.py", tasks / "utils.py")
    (tasks / "shapes_lvprune.yaml").write_text(TASK_YAML.format(test_json=paths["test"]))
    return {"base": base, "pruner": root / "pruner", "test": paths["test"], "images": root / "data", "tasks": tasks,
            "root": root}


def test_lmms_eval_scores_what_lvprune_scores(world):
    args = ",".join([f"pretrained={world['base']}", f"pruner={world['pruner']}"]
                    + [f"{k}={v}" for k, v in SETTING.items()])
    out = world["root"] / "lmms-out"
    env = {**os.environ, "SHAPES_IMAGE_FOLDER": str(world["images"]), "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "lvprune", "--model_args", args,
                           "--tasks", "shapes_lvprune", "--include_path", str(world["tasks"]), "--batch_size", "4",
                           "--output_path", str(out), "--log_samples"], cwd=world["root"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"lmms-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result_files = sorted(out.rglob("*_results.json"))
    assert result_files, f"no results under {out}:\n{proc.stdout[-2000:]}"
    scored = json.loads(result_files[-1].read_text())["results"]["shapes_lvprune"]
    lmms_accuracy = next(v for k, v in scored.items() if k.startswith("exact_match") and "stderr" not in k)

    from lvprune.integrations.lmms_eval import parse_plphp, parse_ratios

    model = load_pruned_model(world["base"], world["pruner"], keep_ratios=parse_ratios(SETTING["keep_ratios"]),
                              press=parse_plphp({k: v for k, v in SETTING.items() if k.startswith("plphp_")}),
                              dtype=torch.float32)
    _, processor = load_reference(world["base"])
    questions = load_questions(world["test"], world["images"])
    answers = answer_questions(model, processor, questions, batch_size=4)
    ours = exact_match(answers, [q.answer for q in questions])
    assert lmms_accuracy == pytest.approx(ours, abs=1e-6) and 0 < ours < 1  # some right, some wrong (float32)
    samples = [json.loads(line) for path in out.rglob("*samples_shapes_lvprune*.jsonl")
               for line in path.read_text().splitlines()]
    generated = {row["doc_id"]: first(row["filtered_resps"]) for row in samples}
    assert [generated[i].strip() for i in range(len(questions))] == [a.strip() for a in answers]
    assert model.pruning_stats.layers[-1].vision_tokens[0] < model.pruning_stats.layers[0].vision_tokens[0]


def first(response):
    """A logged response: the text, or a list whose first entry is (lmms-eval versions differ)."""
    return first(response[0]) if isinstance(response, list) else response


def test_loglikelihood_is_the_masked_training_forwards(world):
    from lmms_eval.api.instance import Instance

    from lvprune.integrations.lmms_eval import LVPrune

    os.environ["SHAPES_IMAGE_FOLDER"] = str(world["images"])
    sys.path.insert(0, str(TASK))
    import utils as task_utils

    adapter = LVPrune(pretrained=str(world["base"]), pruner=str(world["pruner"]), keep_ratios="0.5:0.3:0.1")
    docs = json.loads(Path(world["test"]).read_text())[:3]
    adapter.task_dict = {"shapes": {"test": docs}}
    requests = [Instance(request_type="loglikelihood", doc=doc, idx=0, metadata={"task": "shapes", "doc_id": i, "repeats": 1},
                         arguments=(task_utils.doc_to_text(doc), answer, task_utils.doc_to_visual, i, "shapes", "test"))
                for i, doc in enumerate(docs) for answer in (task_utils.doc_to_target(doc), "purple")]
    scores = adapter.loglikelihood(requests)
    # the reference: the masked training forward (eval-mode top-k decisions) on prompt + continuation
    base, processor = load_reference(world["base"])
    pruner = LVPrunerModel.from_pretrained(world["pruner"])
    pruner = LVPrunerModel(LVPrunerConfig(**{**pruner.config.to_dict(), "keep_ratios": [0.5, 0.3, 0.1]}))
    pruner.load_state_dict(LVPrunerModel.from_pretrained(world["pruner"]).state_dict())
    trainer = LVPruningForTraining(base, pruner).eval()
    try:
        for request, (logprob, greedy) in zip(requests, scores):
            context, continuation, to_visual, doc_id = request.args[:4]
            images = to_visual(docs[doc_id])
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
            full = processor(text=[prompt + continuation], images=images, return_tensors="pt")
            n_prompt = len(processor(text=[prompt], images=images)["input_ids"][0])
            labels = torch.full_like(full["input_ids"], -100)
            labels[:, n_prompt:] = full["input_ids"][:, n_prompt:]
            with torch.no_grad():
                out = trainer(**full, labels=labels)
            n = int((labels != -100).sum())
            assert logprob == pytest.approx(-out.causal_loss.item() * n, rel=1e-5, abs=1e-5)
            assert greedy == bool((out.logits[0, n_prompt - 1:-1].argmax(-1) == full["input_ids"][0, n_prompt:]).all())
    finally:
        trainer.detach()


def test_model_args_name_any_registered_method():
    """`method=` / `press=` build registered methods from their `NAME_option` args; mistakes are refused."""
    from lvprune import FastVPruner, PLPHPPress
    from lvprune.families.tiny import tiny_llava
    from lvprune.integrations.lmms_eval import parse_methods

    config = tiny_llava(seed=0).config
    stage, press = parse_methods(config, None, "fastv", "plphp", {"fastv_keep_ratio": "0.25", "plphp_r": "0.5"})
    assert isinstance(stage, FastVPruner) and stage.config.keep_ratios == (0.25,)
    assert press == PLPHPPress(r=0.5)
    stage, press = parse_methods(config, None, "random", None, {"random_seed": "4"})
    assert stage.seed == 4 and press is None
    assert parse_methods(config, None, None, "plphp", {}) == (None, PLPHPPress())
    stage, _ = parse_methods(config, None, "divprune", None, {"divprune_keep_ratio": "0.1"})
    assert stage.config.after_layers == (0,) and stage.config.keep_ratios == (0.1,)
    stage, _ = parse_methods(config, None, "pdrop", None, {"pdrop_keep_ratios": "0.5:0.3", "pdrop_after_layers": "1:3"})
    assert stage.config.after_layers == (1, 3) and stage.config.keep_ratios == (0.5, 0.3)
    # keep=K: vision tokens per image (the tiny base: 16), as the papers give a one-stage method's budget
    for name, keep in [("divprune", 4), ("visionzip", 8), ("fastv", 2)]:
        stage, _ = parse_methods(config, None, name, None, {"keep": str(keep)})
        assert stage.config.keep_ratios == (keep / 16,) and round(stage.config.keep_ratios[0] * 16) == keep
    with pytest.raises(ValueError, match="keep= is the budget of a one-stage method .* not of pdrop"):
        parse_methods(config, None, "pdrop", None, {"keep": "4"})
    with pytest.raises(ValueError, match="pass keep= or fastv_keep_ratio=, not both"):
        parse_methods(config, None, "fastv", None, {"keep": "4", "fastv_keep_ratio": "0.2"})
    with pytest.raises(ValueError, match="keep=17 must be a whole number of tokens in 0..16"):
        parse_methods(config, None, "divprune", None, {"keep": "17"})
    from lvprune.families import supported

    with pytest.raises(ValueError, match="Qwen2-VL turns images of different sizes into different counts"):
        parse_methods(supported()["qwen2_vl"].tiny_config(), None, "divprune", None, {"keep": "4"})
    with pytest.raises(ValueError, match="pass it as press=plphp"):
        parse_methods(config, None, "plphp", None, {})
    with pytest.raises(ValueError, match="pruner= .* or method=fastv, not both"):
        parse_methods(config, "me/pruner", "fastv", None, {})
    with pytest.raises(ValueError, match="fastv takes no option 'ratio'"):
        parse_methods(config, None, "fastv", None, {"fastv_ratio": "0.2"})
    with pytest.raises(ValueError, match="unknown fastv_keep_ratio"):
        parse_methods(config, None, None, None, {"fastv_keep_ratio": "0.2"})
    with pytest.raises(ValueError, match="unknown pruning method 'h2o'"):
        parse_methods(config, None, "h2o", None, {})
