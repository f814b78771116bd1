"""The real training script, launched with `accelerate launch` on the tiny random LLaVA and synthetic shapes.

Four runs, made once for the module (each a subprocess, as users run it):

- `reference`: 2 steps of global batch 4 (2 per device x 2 accumulation), a checkpoint every step, pushed to a
  fake Hub on 127.0.0.1;
- `stopped`: the same run stopped after step 1 (`--stop_after_steps 1`, the schedule still planned for 2);
- `resumed`: a copy of `stopped` with the debris of a save killed at step 2 planted in it, resumed with
  `--resume_from_checkpoint latest`;
- `ddp`: the same global batch as 2 per device x 2 CPU processes (gloo).

Gumbel noise is seeded per global micro-batch (seed, k), and processes get whole micro-batches round-robin,
so the DDP run draws exactly the reference's noise for exactly the reference's micro-batches: its losses and
weights can be compared with the single-process run with accumulation (DDP averages the two micro-batch
gradients where accumulation sums halves).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

from conftest import free_port

from lvprune import LVPrunerConfig, LVPrunerModel, load_pruned_model
from lvprune.bench.methods import METHOD_NAMES
from lvprune_shapes.assets import materialise_shapes, materialise_tiny_base

REPO_ID = "lvprune-test/tiny-pruner"
NUM_SAMPLES = 32

pytestmark = pytest.mark.slow  # end-to-end runs of the real script


# =============================================================================== helpers


def tree_digest(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file under `folder`."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def command(assets, out: Path, *extra, processes: int = 1, env: dict | None = None) -> tuple[list[str], dict]:
    """The `accelerate launch train/train.py ...` command line of a tiny run, and its environment."""
    accelerate = ["--config_file", str(ROOT / "configs/accelerate/single.yaml")]
    if processes > 1:
        accelerate = ["--config_file", str(ROOT / "configs/accelerate/ddp.yaml"), "--num_processes",
                      str(processes), "--main_process_port", str(free_port())]
    args = ["--config", "configs/tiny-cpu.yaml", "--base_model", str(assets["base"]),
            "--data_path", str(assets["data"]), "--image_folder", str(assets["images"]),
            "--output_dir", str(out), "--per_device_batch_size", "2", "--max_steps", "2",
            "--save_steps", "1", "--record_samples", "true", *map(str, extra)]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "ACCELERATE_USE_CPU": "1", **(env or {})}
    return [sys.executable, "-m", "accelerate.commands.launch", *accelerate, "train/train.py", *args], env


def launch(assets, out: Path, *extra, processes: int = 1, env: dict | None = None) -> dict:
    """Run train/train.py under `accelerate launch`; returns its train_summary.json and stdout."""
    cmd, env = command(assets, out, *extra, processes=processes, env=env)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {**json.loads((out / "train_summary.json").read_text()), "stdout": proc.stdout}


def metrics(out: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def samples(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"samples-rank{rank}.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


# =============================================================================== runs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    base = materialise_tiny_base(root)
    data, images = materialise_shapes(root, NUM_SAMPLES)
    return {"base": base, "data": data, "images": images, "base_digest": tree_digest(base)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub(tmp_path_factory.mktemp("hub"), lifetime=600) as server:
        yield server


@pytest.fixture(scope="module")
def reference(assets, hub, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    # CI runs offline (HF_HUB_OFFLINE=1); the fake Hub is local, so this run may use the network stack.
    env = {"HF_TOKEN": "test-token", "HF_HUB_OFFLINE": "0"}
    summary = launch(assets, out, "--gradient_accumulation_steps", 2, "--push_to_hub", REPO_ID,
                     "--hub_endpoint", hub.url, "--evaluate", "quick", env=env)
    return out, summary


@pytest.fixture(scope="module")
def stopped(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    return out, launch(assets, out, "--gradient_accumulation_steps", 2, "--stop_after_steps", 1)


@pytest.fixture(scope="module")
def resumed(assets, stopped, tmp_path_factory):
    out = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(stopped[0], out)
    # A save killed at step 2: a half-written staging folder.
    (out / ".tmp-checkpoint-2" / "pruner").mkdir(parents=True)
    (out / ".tmp-checkpoint-2" / "optimizer.bin").write_bytes(b"\0" * 10)
    # Another tool's folder, named as HF Trainer names its checkpoints: lvprune must leave it alone.
    (out / "checkpoint-500").mkdir()
    (out / "checkpoint-500" / "trainer_state.json").write_text("{}")
    return out, launch(assets, out, "--gradient_accumulation_steps", 2, "--resume_from_checkpoint", "latest")


@pytest.fixture(scope="module")
def ddp(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    checks = out / "data-checks"  # its own: the other runs' checks of the same data would be reused
    return out, launch(assets, out, "--gradient_accumulation_steps", 1, "--data_cache_dir", checks, processes=2)


# =============================================================================== tests


def test_export_is_a_trained_pruner(reference, assets):
    out, summary = reference
    final = out / "final"
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    pruner = LVPrunerModel.from_pretrained(final)
    assert pruner.config.keep_ratios == [0.5, 0.3, 0.1] and pruner.config.after_layers == [1, 2, 3]
    assert pruner.config.base_model_name_or_path == str(assets["base"])
    torch.manual_seed(0)  # the run's seed: the same initial weights
    initial = LVPrunerModel(LVPrunerConfig.from_pretrained(final)).state_dict()
    trained = pruner.state_dict()
    assert trained.keys() == initial.keys()
    moved = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert len(moved) > len(trained) // 2, f"only {moved} changed"
    assert summary["step"] == 2 and summary["global_batch"] == 4 and summary["replicas_in_sync"]


def test_pruned_model_generates(reference, assets):
    from transformers import AutoProcessor

    from lvprune.data.llava_format import encode_record
    from lvprune.data.records import normalize_record

    model = load_pruned_model(str(assets["base"]), pruner=str(reference[0] / "final"))
    processor = AutoProcessor.from_pretrained(assets["base"])
    record = normalize_record(json.loads(assets["data"].read_text())[0], 0)
    example = encode_record(record, assets["images"], processor)
    prompt = example["input_ids"][example["labels"] == -100][None]  # the prompt: everything before the answer
    generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                               pixel_values=example["pixel_values"], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 3)
    # 64 vision tokens; after layers 1, 2, 3 keep round(64 x [0.5, 0.3, 0.1]) = 32, 19, 6.
    assert [layer.vision_tokens[0] for layer in model.pruning_stats.layers] == [64, 32, 19, 6]


def test_model_card(reference, assets):
    out, summary = reference
    card = (out / "final" / "README.md").read_text()
    base = assets["base"].name  # local paths appear by their last component only
    assert "base_model:" not in card and str(assets["base"].parent) not in card
    assert f'load_pruned_model("{base}", pruner="{REPO_ID}")' in card
    for row in ("| 0 | 1 | 0.5 |", "| 1 | 2 | 0.3 |", "| 2 | 3 | 0.1 |"):
        assert row in card
    assert f"| causal_loss | {summary['causal_loss']:.4g} |" in card
    assert f"`{assets['data'].name}`" in card and str(assets["data"].parent) not in card
    assert "the base model is unchanged" in card  # no LoRA in this run
    assert all(p.stat().st_mode & 0o044 for p in (out / "final").iterdir())  # readable as the umask allows


def test_push_to_hub(reference, hub):
    final = reference[0] / "final"
    uploaded = hub.repo_dir(REPO_ID)
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in final.iterdir())
    for path in final.iterdir():
        assert (uploaded / path.name).read_bytes() == path.read_bytes(), path.name
    a, b = LVPrunerModel.from_pretrained(uploaded).state_dict(), LVPrunerModel.from_pretrained(final).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    routes = [path for _, path in hub.calls]
    assert routes[0] == "/api/repos/create" and f"/api/models/{REPO_ID}/commit/main" in routes
    assert hub.repos[REPO_ID]["visibility"] is None  # the namespace's default unless --hub_private is given


def test_checkpoints_hold_only_the_pruner(reference):
    out, _ = reference
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-2"]
    for step in (1, 2):
        folder = out / f"checkpoint-{step}"
        marker = json.loads((folder / "checkpoint_complete.json").read_text())
        assert marker["step"] == step
        assert not list(folder.glob("model*.safetensors")), "the frozen base must not be checkpointed"
        assert (folder / "pruner" / "model.safetensors").is_file() and (folder / "optimizer.bin").is_file()
    final, last = weights(out / "final"), weights(out / "checkpoint-2" / "pruner")
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_stop_after_steps_leaves_a_resumable_checkpoint(stopped, reference):
    out, summary = stopped
    assert summary["step"] == 1 and summary["total_steps"] == 2
    assert not (out / "final").exists() and not (out / "checkpoint-2").exists()
    a, b = weights(out / "checkpoint-1" / "pruner"), weights(reference[0] / "checkpoint-1" / "pruner")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_matches_an_uninterrupted_run(resumed, reference):
    out, summary = resumed
    assert "resumed from" in summary["stdout"] and str(out / "checkpoint-1") in summary["stdout"]
    assert not (out / ".tmp-checkpoint-2").exists()
    assert (out / "checkpoint-500" / "trainer_state.json").read_text() == "{}"
    assert json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())["step"] == 2
    a, b = weights(out / "final"), weights(reference[0] / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert metrics(out)[2] | {"step_time_s": 0} == metrics(reference[0])[2] | {"step_time_s": 0}
    assert samples(out, 0)[-2:] == samples(reference[0], 0)[-2:]  # step 2 saw the same micro-batches


def test_ddp_checks_the_data_once(ddp):
    # Two processes share the captured output: a line may follow another's unterminated progress bar, so
    # count occurrences, not line starts.
    out = ddp[1]["stdout"]
    assert out.count("data: checking the records") == 1
    assert out.count("[process 0] data: checking the records") == 1
    assert out.count("[process 1] data: reusing the check") == 1


def test_ddp_matches_single_process(ddp, reference):
    out, summary = ddp
    assert summary["processes"] == 2 and summary["global_batch"] == 4
    digests = summary["trainable_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "the ranks ended with different weights"
    by_step = [{row["step"]: row["samples"] for row in samples(out, rank)} for rank in (0, 1)]
    single = {}
    for row in samples(reference[0], 0):
        single.setdefault(row["step"], []).extend(row["samples"])
    for step in (1, 2):
        assert not set(by_step[0][step]) & set(by_step[1][step]), "both ranks saw the same samples"
        assert by_step[0][step] + by_step[1][step] == single[step]
    ref = metrics(reference[0])
    for step, row in metrics(out).items():
        for key in ("loss", "causal_loss", "ratio_loss", "kept_fraction/stage_0", "grad_norm"):
            assert row[key] == pytest.approx(ref[step][key], rel=1e-6, abs=1e-7), (step, key)
    a, b = weights(out / "final"), weights(reference[0] / "final")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_base_weights_are_untouched(assets, reference, stopped, resumed, ddp):
    assert tree_digest(assets["base"]) == assets["base_digest"]


def test_evaluation_benchmarks_the_exported_pruner(reference):
    out, summary = reference
    rows = json.loads((out / "bench" / "results.json").read_text())
    assert [r["method"] for r in rows] == list(METHOD_NAMES)
    by_name = {r["method"]: r for r in rows}
    # the exported pruner prunes: LVPruning's prefill costs less than the unpruned model's, and the stricter
    # schedule less than the looser one
    assert by_name["lvpruning-0.45"]["prefill_tflops"] < by_name["lvpruning-0.6"]["prefill_tflops"]
    assert by_name["lvpruning-0.5"]["prefill_tflops"] < by_name["unpruned"]["prefill_tflops"]
    assert "| lvpruning-0.5 |" in summary["stdout"]  # the table is printed


def test_the_library_entry_point_trains_what_the_job_trains(assets, tmp_path):
    """`accelerate launch -m lvprune.training` on real folders (no demo names, no `--config`) trains the pruner
    the main job's script trains with the same settings."""
    settings = ["--base_model", str(assets["base"]), "--data_path", str(assets["data"]), "--image_folder",
                str(assets["images"]), "--max_steps", "2", "--per_device_batch_size", "2", "--cpu_threads", "1",
                "--learning_rate", "1e-3", "--report_to", "none"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs/accelerate/single.yaml")]
    runs = {"library": [*launcher, "-m", "lvprune.training"],
            "job": [*launcher, "train/train.py", "--config", "configs/tiny-cpu.yaml"]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, *settings, "--output_dir", str(tmp_path / name)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    ours, theirs = (weights(tmp_path / name / "final") for name in runs)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    proc = subprocess.run([sys.executable, "-m", "lvprune.training", "--data_path", "x.json"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "base_model is required" in proc.stderr


def test_the_world_2_job_trains_on_its_conversations_and_benchmarks_its_pruner_on_them(tmp_path):
    """`make demo WORLD=v2`'s config (here on the first reference base: the second one is a separate asset): the
    pruner trains on world-2 conversations written at the base's image size, and the benchmark after the export
    scores every method per task on fresh ones; its unpruned and LVPruning rows are what the stock model and the
    serving function (`load_pruned_model`) score on the same conversations."""
    from lvprune import PLPHPPress
    from lvprune.bench.conversations import evaluate_conversations
    from lvprune.bench.harness import load_base
    from lvprune_shapes.reference.cache import SHIPPED_DIR

    assets, out = tmp_path / "assets", tmp_path / "out"
    settings = ["--config", "configs/world2.yaml", "--base_model", str(SHIPPED_DIR), "--synthetic_samples", "8",
                "--max_steps", "2", "--per_device_batch_size", "2", "--evaluate", "quick", "--cpu_threads", "1",
                "--assets_dir", str(assets), "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "configs/accelerate/single.yaml"), "train/train.py", *settings], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    train_json = assets / "world2-8-96px" / "train.json"  # the first base's 96 px
    records = json.loads(train_json.read_text())
    assert len(records) == 8 and {len(r["qa"]) for r in records} <= {1, 2, 3} and any(len(r["qa"]) == 3
                                                                                   for r in records)
    assert any(isinstance(r["image"], list) and len(r["image"]) > 1 for r in records)
    assert f"data: {train_json}: kept 8 of 8 records" in proc.stdout + proc.stderr  # what it trained on
    rows = {r["method"]: r for r in json.loads((out / "bench" / "world2_bench.json").read_text())["rows"]}
    assert {"unpruned", "plphp", "plphp-uniform", "lvpruning-0.5", "lvpruning-0.5+plphp"} <= set(rows)
    assert rows["plphp-random-slots"]["kv"] == pytest.approx(rows["plphp"]["kv"])  # PLPHP's counts, random slots
    assert "| lvpruning-0.5 |" in proc.stdout  # the table is printed

    (test_folder,) = [p for p in assets.iterdir() if p.name.startswith("world2-test-96px-6-")]
    test = (test_folder / "test.json", test_folder)
    model, processor = load_base(SHIPPED_DIR)
    assert rows["unpruned"]["by_task"] == evaluate_conversations(model, processor, *test, progress=False)["by_task"]
    for name, press in (("lvpruning-0.5", None), ("lvpruning-0.5+plphp", PLPHPPress())):
        served = load_pruned_model(SHIPPED_DIR, out / "final", keep_ratios=[0.5, 0.3, 0.1], press=press)
        scores = evaluate_conversations(served, processor, *test, progress=False)
        assert rows[name]["by_task"] == scores["by_task"], name
