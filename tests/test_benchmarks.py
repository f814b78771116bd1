"""The speed benchmarks run (the GPU one at a reduced shape, on the CPU) and report the costs they measure."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu  # noqa: E402

pytestmark = pytest.mark.slow


def test_gpu_benchmark_runs_on_cpu_at_a_reduced_shape(capsys, tmp_path):
    report = gpu.main(["--device", "cpu", "--dtype", "float32", "--reduced", "--attn", "sdpa", "--batches", "2",
                       "--new_tokens", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert report["stock_check"]["equal"] is True  # nothing pruned: the stock tokens
    assert report["training"] == {"skipped": "no CUDA"}  # accelerate runs DeepSpeed on CUDA only
    written = json.loads((tmp_path / "gpu.json").read_text())
    markdown = (tmp_path / "gpu.md").read_text()
    assert written["stock_check"] == report["stock_check"] and "| 2 | lvpruning-0.5+plphp |" in markdown
    assert "skipped: no CUDA" in markdown
    found = report["speed"]
    costs, results = found["sdpa"]["costs"][2], found["sdpa"]["results"][2]
    names = ["stock", "lvpruning-0.6", "lvpruning-0.5", "lvpruning-0.45", "plphp", "plphp-batch",
             "lvpruning-0.5+plphp", "truncated"]
    assert list(results) == names and all(len(rounds) == 1 for rounds in results.values())
    # the stock cache: K and V of 4 layers x 2 samples x (576 + 30) tokens x 2 heads x 64 dims, in fp32
    assert costs["stock"]["kv"] == 2 * 4 * 2 * (576 + 30) * 2 * 64 * 4
    assert costs["truncated"]["kv"] == costs["plphp"]["kv"] < costs["stock"]["kv"]
    flops = [costs[name]["flops"] for name in ("stock", "lvpruning-0.6", "lvpruning-0.5", "lvpruning-0.45")]
    assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]
    table = capsys.readouterr().out
    assert "| lvpruning-0.5+plphp |" in table and "mixed batch" in table


def test_data_scale_benchmark_checks_once_and_reuses(capsys, tmp_path):
    import data_scale

    rows = data_scale.main(["--sizes", "12", "24", "--workers", "0", "1", "--examples", "8", "--batch_size", "4",
                            "--work_dir", str(tmp_path)])
    assert [row["records"] for row in rows] == [12, 24]  # each checked cold, then reused warm (asserted inside)
    assert set(rows[0]["examples_per_s"]) == {0, 1} and all(v > 0 for v in rows[0]["examples_per_s"].values())
    assert len(list((tmp_path / "checks-24").iterdir())) == 1, "one check kept per data file"
    out = capsys.readouterr().out
    assert "| 24 |" in out and "LLaVA-1.5 mix (665,298 records), extrapolated from 24" in out


def test_vision_attention_says_where_deep_layers_reattend():
    from vision_attention import reattends

    assert reattends([0.9, 0.5, 0.1, 0.3]) == (True, 2, 3)  # 0.1 -> 0.3: 3x and +0.2
    assert reattends([0.9, 0.5, 0.1, 0.14]) == (False, 2, 3)  # 1.4x
    assert reattends([0.9, 0.2, 0.1, 0.16]) == (True, 2, 3)  # 1.6x and +0.06
    assert reattends([0.9, 0.2, 0.02, 0.04]) == (False, 2, 3)  # 2x but +0.02
    assert reattends([0.5, 0.4, 0.3, 0.2]) == (False, 3, 3)  # falls to the last layer
    assert reattends([0.6, 0.8, 0.4, 0.9, 0.3]) == (True, 2, 3)  # a rise, then the last layer looks away
    assert reattends([0.6, 0.3, 0.5, 0.2, 0.7, 0.1]) == (True, 3, 4)  # of two rises, the larger (+0.5)


def test_vision_attention_groups_world_2_prompts_by_task(capsys, tmp_path):
    from vision_attention import main

    from lvprune_shapes.reference.cache import SHIPPED_DIR
    from lvprune_shapes.world2 import World2Config, make_world2_dataset

    paths = make_world2_dataset(tmp_path, {"test": 6}, World2Config(tasks=("single",)))
    main(["--base", str(SHIPPED_DIR), "--data", str(paths["test"]), "--image_folder", str(tmp_path),
          "--records", "6", "--figure", str(tmp_path / "va.png")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| single |")]
    values = [float(v) for v in lines[0].split("|")[2:6]]
    assert len(lines) == 1 and (tmp_path / "va.png").stat().st_size > 0
    # the reference: the stock model's eager attention of the last prompt token on the vision rows, head mean
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from lvprune.bench.conversations import conversation_images, first_prompt, load_conversations
    from lvprune.families import backbone_for

    model = LlavaForConditionalGeneration.from_pretrained(SHIPPED_DIR, attn_implementation="eager").eval()
    processor, backbone = AutoProcessor.from_pretrained(SHIPPED_DIR), backbone_for(model.config)
    per_prompt = []
    for conversation in load_conversations(paths["test"], tmp_path):
        inputs = first_prompt(conversation, conversation_images(conversation), processor, backbone)
        vision = inputs["input_ids"][0] == model.config.image_token_id
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        per_prompt.append([float(a[0, :, -1, vision].sum(-1).mean()) for a in attentions])
    expected = torch.tensor(per_prompt).mean(0).tolist()
    assert values == pytest.approx(expected, abs=0.006)


def test_world2_bench_scores_each_method_per_task_from_its_cache(capsys, tmp_path):
    from world2_bench import main

    from lvprune.bench.conversations import evaluate_conversations, load_conversations
    from lvprune.bench.harness import load_base
    from lvprune_shapes.reference.cache import SHIPPED_DIR

    main(["--base", str(SHIPPED_DIR), "--tasks", "single", "--conversations", "4", "--kv_samples", "2",
          "--timing_runs", "1", "--timing_repeats", "1", "--decode_tokens", "2", "--cache_dir", str(tmp_path),
          "--figures", str(tmp_path / "figures")])
    rows = {r["method"]: r for r in json.loads((tmp_path / "figures" / "world2_bench.json").read_text())["rows"]}
    assert (tmp_path / "figures" / "world2_bench.png").stat().st_size > 0
    assert "lvpruning-0.5" not in rows and {"unpruned", "random", "fastv", "pdrop", "plphp"} <= set(rows)
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("world2-test")]
    model, processor = load_base(SHIPPED_DIR)
    stock = evaluate_conversations(model, processor, folder / "test.json", folder, progress=False)
    assert rows["unpruned"]["by_task"] == stock["by_task"] and rows["unpruned"]["kv"] == 1.0
    # FastV (after layer 2 of 4) keeps a tenth of the 256 vision rows in layers 2-3: the KV held, by counting slots
    from lvprune.bench.conversations import conversation_images, first_prompt
    from lvprune.families import backbone_for

    fractions = []
    for conversation in load_conversations(folder / "test.json", folder)[:2]:
        ids = first_prompt(conversation, conversation_images(conversation), processor,
                           backbone_for(model.config))["input_ids"]
        length = ids.shape[1]
        fractions.append((2 * length + 2 * (length - 256 + round(0.1 * 256))) / (4 * length))
    assert rows["fastv"]["kv"] == pytest.approx(sum(fractions) / 2, rel=1e-9)


def test_a_world_2_pruner_is_recorded_as_such_and_reused_from_its_cache(tmp_path):
    from lvprune.methods.lvpruning.modules import LVPrunerModel
    from lvprune_shapes.bench_pruner import bench_pruner
    from lvprune_shapes.reference.cache import SHIPPED_DIR

    folder = bench_pruner(SHIPPED_DIR, train_records=16, per_device_batch_size=8, image_size=96, world=2,
                          cache_dir=tmp_path)
    assert json.loads((folder / "training_config.json").read_text())["world"] == 2
    assert LVPrunerModel.from_pretrained(folder).config.num_hidden_layers == 4
    again = bench_pruner(SHIPPED_DIR, train_records=16, per_device_batch_size=8, image_size=96, world=2,
                         cache_dir=tmp_path)
    assert again == folder and len(list(tmp_path.iterdir())) == 1  # cached, not retrained


def test_the_plphp_sweep_on_world_2_scores_each_setting_as_the_served_press_does(capsys, tmp_path):
    """`plphp_sweep.py --world 2`: a row per (start layer, r, Δr) with the thresholds it measured; its scores per
    task are what `load_pruned_model` with that press scores on the same conversations."""
    from plphp_sweep import main

    from lvprune import PLPHPPress, load_pruned_model
    from lvprune.bench.conversations import evaluate_conversations
    from lvprune.bench.harness import load_base
    from lvprune_shapes.reference.cache import SHIPPED_DIR

    main(["--world", "2", "--base", str(SHIPPED_DIR), "--test_records", "4", "--start_layers", "1",
          "--rates", "0.2", "0.1", "--cache_dir", str(tmp_path), "--out", str(tmp_path / "sweep")])
    lines = capsys.readouterr().out.splitlines()
    written = (tmp_path / "sweep" / "plphp_sweep.md").read_text().splitlines()
    assert [line for line in written if line.startswith("|")] == [line for line in lines if line.startswith("|")]
    header = next(line for line in lines if line.startswith("| start layer"))
    (row,) = [line for line in lines if line.startswith("| 1 |")]
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]))
    assert "LVP 0.5 + plphp all" not in cells  # no pruner given: PLPHP alone
    press = PLPHPPress(r=0.2, delta_r=0.1, alpha=float(cells["alpha"]), beta=float(cells["beta"]), start_layer=1)
    assert press.beta < press.alpha
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("world2-test")]
    _, processor = load_base(SHIPPED_DIR)
    served = evaluate_conversations(load_pruned_model(SHIPPED_DIR, press=press), processor, folder / "test.json",
                                    folder, progress=False)
    for task, score in served["by_task"].items():
        assert float(cells[f"plphp {task}"]) == pytest.approx(100 * score, abs=0.051), task
    assert float(cells["plphp all"]) == pytest.approx(100 * served["overall"], abs=0.051)
    assert 0 < float(cells["plphp KV"].rstrip("%")) < 100
