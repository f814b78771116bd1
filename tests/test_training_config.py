"""The training script's parts, in process: layered config (the main job's `JobConfig`, which is `TrainConfig`
plus the shapes world's names), shipped configs, atomic checkpoints, data order and sharding (against
accelerate's own sharding), LoRA placement, and the model card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from lvprune import LVPrunerConfig
from lvprune.families.tiny import tiny_llava
from lvprune.hub import model_card
from lvprune.training import TrainConfig
from lvprune.training import checkpoints as checkpointing
from lvprune.training.data import EpochSampler, micro_batch_index
from lvprune.training.lora import add_lora, lora_config, save_lora
from lvprune_shapes.job import JobConfig
from lvprune_shapes.job import parse_job_config as parse_config

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


# =============================================================================== configuration


def test_layering_defaults_then_yaml_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 2.0e-6\nkeep_ratios: [0.6, 0.4, 0.2]\nlora_r: 4\n")
    config = parse_config(["--config", str(path), "--lora_r", "8", "--after_layers", "1", "2", "3",
                           "--push_to_hub", "me/pruner", "--record_samples", "true"])
    assert config.learning_rate == 2e-6 and config.keep_ratios == [0.6, 0.4, 0.2]  # from the YAML
    assert config.lora_r == 8 and config.after_layers == [1, 2, 3] and config.record_samples is True  # CLI wins
    assert config.push_to_hub == "me/pruner" and config.seed == JobConfig().seed  # untouched default
    assert parse_config(["--config", str(path), "--keep_ratios", "0.7", "0.5"]).keep_ratios == [0.7, 0.5]
    assert parse_config(["--config", str(path), "--learning_rate", "1e-4"]).learning_rate == 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--max_step", "3"], "'max_step' (did you mean 'max_steps'?)"),
    (["--lora_r", "four"], "argument --lora_r/--lora-r: invalid int value: 'four'"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16' (choose from"),
    (["--output_dir", "one", "two"], "argument --output_dir: takes one value; 'two' is one too many"),
    (["--warmup_ratio", "1.5"], "warmup_ratio=1.5 must be in [0, 1)"),
    (["--keep_ratios", "0.5", "high"], "argument --keep_ratios/--keep-ratios: invalid float value: 'high'"),
    (["--plphp_alpha", "0.2", "--plphp_beta", "0.6"], "PLPHP thresholds need 0 <= beta < alpha"),
    (["--learning_rate", "inf"], "learning_rate=inf must be a finite number"),
    (["--max_grad_norm", "nan"], "max_grad_norm=nan must be a finite number"),
    (["--keep_ratios", "0.5", "nan"], "must be a finite number"),
    (["--lambda_ratio", "-1"], "lambda_ratio=-1.0 must be >= 0"),
    (["--seed", "4294967296"], "must be below 2**32"),
    (["--keep_ratios", "1.5", "0.3", "0.1"], "must each be in (0, 1]"),
])
def test_bad_command_line_names_the_key(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        parse_config(argv)
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train/train.py: error: ") and message in last


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 1.0e-5\nlearnig_rate: 1.0e-5\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path)])
    assert "bad.yaml: unknown key(s) 'learnig_rate' (did you mean 'learning_rate'" in capsys.readouterr().err


def test_every_key_is_documented(capsys):
    undocumented = [f.name for f in dataclasses.fields(JobConfig) if len(f.metadata.get("help", "")) < 10]
    assert not undocumented
    with pytest.raises(SystemExit) as done:
        parse_config(["--help"])
    assert done.value.code == 0
    assert "--chat_template" in capsys.readouterr().out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_yaml_opens_with_its_command(path):
    lines = path.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert header and any(line.startswith("#   accelerate launch") for line in header), header
    if path.parent.name == "configs":
        parse_config(["--config", str(path)])  # valid training config (world2.yaml: on the shipped second base)


def test_default_run_prunes_the_reference_base_and_benchmarks_it():
    config = parse_config([])
    assert (config.base_model, config.data_path, config.evaluate) == ("reference", "synthetic-shapes", "full")
    from lvprune import PLPHPPress  # the benchmark's plphp rows: what benchmarks/plphp_sweep.py picked

    assert config.plphp_press() == PLPHPPress(r=0.5, delta_r=0.3, alpha=0.886, beta=0.678, start_layer=0)
    assert JobConfig().base_model == "tiny-random"  # the dataclass defaults stay the seconds-long tiny run
    with pytest.raises(ValueError, match="base_model is required"):  # the library's own config names nothing
        TrainConfig()


def test_paper_recipe():
    config = parse_config(["--config", str(ROOT / "configs/llava-1.5-7b.yaml")])
    assert config.base_model == "llava-hf/llava-1.5-7b-hf" and config.data_path == "llava_v1_5_mix665k.json"
    assert config.after_layers == [1, 8, 16] and config.keep_ratios == [0.5, 0.3, 0.1]
    assert (config.learning_rate, config.warmup_ratio, config.weight_decay, config.max_grad_norm) == (2e-6, 0.03, 0, 1)
    assert (config.num_train_epochs, config.max_steps, config.precision, config.lora_r) == (1, 0, "bf16", 0)
    for launcher in ("ddp", "deepspeed_zero2", "deepspeed_zero3"):
        processes = yaml.safe_load((ROOT / f"configs/accelerate/{launcher}.yaml").read_text())["num_processes"]
        assert config.per_device_batch_size * processes * config.gradient_accumulation_steps == 64


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_files(stage):
    launcher = yaml.safe_load((ROOT / f"configs/accelerate/deepspeed_zero{stage}.yaml").read_text())
    ds_file = ROOT / launcher["deepspeed_config"]["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    assert ds["zero_optimization"]["stage"] == stage and launcher["distributed_type"] == "DEEPSPEED"
    # Filled by accelerate from the training config, so the two can never disagree.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[key] == "auto"


# =============================================================================== checkpoints


def _save(root, step):
    staging = checkpointing.begin_checkpoint(root, step)
    (staging / "state.bin").write_bytes(bytes([step]))
    return checkpointing.commit_checkpoint(root, step)


def test_atomic_checkpoints_and_resume_choice(tmp_path):
    assert checkpointing.resume_candidates(tmp_path, "latest") == []  # nothing yet: start from scratch
    for step in (5, 10):
        _save(tmp_path, step)
    checkpointing.begin_checkpoint(tmp_path, 15)  # killed while writing step 15
    (tmp_path / "checkpoint-20").mkdir()  # a folder without a marker: another tool's (HF Trainer's names)
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text("{}")
    assert checkpointing.resume_candidates(tmp_path, "latest") == [tmp_path / "checkpoint-10", tmp_path / "checkpoint-5"]
    assert checkpointing.checkpoint_step(tmp_path / "checkpoint-10") == 10
    with pytest.raises(ValueError, match="incomplete"):
        checkpointing.resume_candidates(tmp_path, str(tmp_path / "checkpoint-20"))
    removed = checkpointing.clean_incomplete(tmp_path)
    assert [p.name for p in removed] == [".tmp-checkpoint-15"]  # only lvprune's own staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "checkpoint-5"]
    assert (tmp_path / "checkpoint-20" / "trainer_state.json").is_file()
    _save(tmp_path, 10)  # saving a step again replaces it
    assert checkpointing.rotate_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint-5"]
    assert (tmp_path / "checkpoint-10" / "state.bin").read_bytes() == bytes([10])


# =============================================================================== data order


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    sampler.use_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(50))
    assert list(EpochSampler(50, seed=3)) == first


@pytest.mark.parametrize("processes", [2, 3])
def test_micro_batch_index_undoes_accelerate_sharding(processes):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    batches = BatchSampler(EpochSampler(48, seed=0), batch_size=2, drop_last=True)
    everything = list(batches)
    for rank in range(processes):
        shard = list(BatchSamplerShard(batches, num_processes=processes, process_index=rank))
        for local, batch in enumerate(shard):
            assert batch == everything[micro_batch_index(local, rank, processes)]


# =============================================================================== LoRA and the card


def test_lora_adapts_only_the_language_model(tmp_path):
    from peft import PeftModel

    config = JobConfig(lora_r=4)
    base = tiny_llava()
    adapted = add_lora(base, lora_config(config))
    layers = base.config.text_config.num_hidden_layers
    assert len(adapted) == 2 * layers and all(".language_model." in name for name in adapted)
    assert all(p.requires_grad == (".lora_" in n) for n, p in base.named_parameters())
    for name, param in base.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # B starts at zero: make the adapter visible
    save_lora(base, lora_config(config), tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llava(), tmp_path)
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.allclose(reloaded(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(ValueError, match="vision_tower"):
        add_lora(tiny_llava(), lora_config(JobConfig(lora_r=4, lora_target=r".*\.(q_proj|v_proj)")))


def test_model_card_states_the_recipe():
    config = LVPrunerConfig(hidden_size=64, num_hidden_layers=32, num_heads=4, after_layers=[1, 8, 16],
                            base_model_name_or_path="llava-hf/llava-1.5-7b-hf")
    card = model_card(config, repo_id="me/pruner", data="llava_v1_5_mix665k.json",
                      metrics={"causal_loss": 1.23456}, training={"steps": 9700})
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf" and meta["library_name"] == "lvprune"
    assert 'load_pruned_model("llava-hf/llava-1.5-7b-hf", pruner="me/pruner")' in card
    assert "| 1 | 8 | 0.3 |" in card and "| causal_loss | 1.235 |" in card and "- steps: `9700`" in card


def test_cpu_threads_zero_shares_the_cores_among_local_processes(monkeypatch):
    from lvprune.training import loop as train

    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert train.cpu_share() == 8  # `accelerate launch` alone: the one process gets every core
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert train.cpu_share() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert train.cpu_share() == 1


def test_push_sends_visibility_only_when_asked(tmp_path, monkeypatch):
    from fakehub import FakeHub

    from lvprune.hub import push_folder

    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{}")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the fake Hub is on 127.0.0.1
    with FakeHub(tmp_path / "hub") as hub:
        for repo, private in (("me/default", None), ("me/private", True), ("me/public", False)):
            push_folder(tmp_path / "folder", repo, endpoint=hub.url, token="t", private=private)
        assert {repo: hub.repos[repo]["visibility"] for repo in hub.repos} == \
            {"me/default": None, "me/private": "private", "me/public": "public"}
