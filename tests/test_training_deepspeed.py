"""LVPruning's training step under DeepSpeed's own engine, ZeRO-2 and ZeRO-3, on 2 CPU processes (gloo).

Accelerate's DeepSpeed plugin cannot run on CPU, so `lvprune.training.deepspeed_check` drives `deepspeed.initialize`
directly (its first run JIT-compiles a small communication op, ~35 s). The reference is the same training
written out in plain PyTorch in this process: both processes' micro-batches, their mean gradient, clipping at
1.0 and AdamW, step after step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

from lvprune.training.deepspeed_check import build, local_batch

ROOT = Path(__file__).resolve().parents[1]

STEPS, LR, SEED, KEEP = 6, 1e-2, 0, [0.9, 0.8, 0.7]
STAGES = (2, 3)

pytestmark = pytest.mark.slow  # end-to-end runs of the real script


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed") / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lvprune.training.deepspeed_check", "--stages", *map(str, STAGES), "--steps", str(STEPS), "--lr", str(LR),
           "--seed", str(SEED), "--keep_ratios", *map(str, KEEP), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, f"DeepSpeed check failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out, json.loads(out.read_text())


@pytest.fixture(scope="module")
def plain_pytorch():
    """The same two-process training, in one process: losses per step and the final pruner weights."""
    model = build(SEED, KEEP)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    batches = [local_batch(model.base_model.config, rank) for rank in (0, 1)]
    losses = []
    for _ in range(STEPS):
        total = 0.0
        for rank, batch in enumerate(batches):
            torch.manual_seed(SEED * 1000 + rank)
            loss = model(**batch).loss
            (loss / 2).backward()  # data parallelism averages the processes' gradients
            total += loss.item() / 2
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return losses, {k: v.detach().clone() for k, v in model.pruner.state_dict().items()}


@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_trains_like_plain_pytorch(report, plain_pytorch, stage):
    out, result = report
    run = result["stages"][str(stage)]
    losses, reference = plain_pytorch
    assert result["world_size"] == 2
    assert run["losses"] == pytest.approx(losses, rel=1e-5)
    assert run["losses"][-1] < run["losses"][0] - 0.3, "the loss on a repeated batch must fall"
    assert run["ratio_losses"][-1] < 0.2 * run["ratio_losses"][0]  # the kept fractions approach their targets
    assert run["base_unchanged"], "the frozen base moved"
    assert run["pruner_digests"][0] == run["pruner_digests"][1], "the processes hold different pruners"
    trained = load_file(f"{out}.zero{stage}.safetensors")
    assert trained.keys() == reference.keys()
    assert max((trained[k] - reference[k]).abs().max().item() for k in trained) < 1e-4


def test_an_accelerate_deepspeed_config_without_cuda_is_refused(tmp_path):
    """accelerate drops DeepSpeed without CUDA and would train as plain DDP: the script refuses, saying what to do."""
    if torch.cuda.is_available():
        pytest.skip("a machine with CUDA runs DeepSpeed")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/deepspeed_zero2.yaml"), "--num_processes", "1", "train/train.py",
           "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "asks for DeepSpeed, which accelerate runs on CUDA GPUs only" in proc.stderr
    assert "torchrun --nproc_per_node 2 -m lvprune.training.deepspeed_check" in proc.stderr
    assert not (tmp_path / "run").exists(), "nothing may be trained or written before the refusal"
