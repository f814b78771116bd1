"""The training script on bad days: divergence, preemption, a second trainer, resumes across epochs and process
splits, planted pickles, relaunches of a finished run. Each run is the real script on the tiny random LLaVA."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_training_script import ROOT, assets, command, launch, metrics, tree_digest, weights  # noqa: F401

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 8  # 32 records, 2 per device x 2 accumulation


def complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "checkpoint_complete.json").is_file())


def wait_for_step(out: Path, step: int, process, timeout: float = 120) -> None:
    """Block until `metrics.jsonl` records `step` (or fail if the run ends or the time runs out)."""
    deadline = time.time() + timeout
    path = out / "metrics.jsonl"
    while time.time() < deadline:
        if path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line):
            return
        assert process.poll() is None, f"the run ended early:\n{process.communicate()[1][-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def direct(assets, out, *extra):
    """`python train/train.py ...` without the launcher: the process a scheduler signals."""
    cmd, env = command(assets, out, *extra)
    return [cmd[0], "train/train.py", *cmd[cmd.index("train/train.py") + 1:]], env


# =============================================================================== divergence


def test_divergence_stops_with_an_error_and_writes_nothing_non_finite(assets, tmp_path):
    out = tmp_path / "run"
    cmd, env = command(assets, out, "--learning_rate", "1e30", "--max_steps", 6, "--save_steps", 1)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "training diverged at step" in proc.stderr
    assert not (out / "final").exists()
    for step in complete_checkpoints(out):
        tensors = weights(out / f"checkpoint-{step}" / "pruner")
        assert all(torch.isfinite(t).all() for t in tensors.values()), f"checkpoint-{step} is not finite"


# =============================================================================== preemption


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_a_resumable_checkpoint(assets, tmp_path, signum):
    out = tmp_path / "run"
    cmd, env = direct(assets, out, "--max_steps", 400, "--save_steps", 0, "--gradient_accumulation_steps", 1)
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(out, 2, process)
    second, env2 = direct(assets, out, "--max_steps", 400)  # a second trainer on the same output_dir
    refused = subprocess.run(second, cwd=ROOT, env=env2, capture_output=True, text=True, timeout=120)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert refused.returncode != 0 and "in use by another trainer" in refused.stderr
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    saved = complete_checkpoints(out)
    assert len(saved) == 1 and "stopped after step" in stdout
    resumed = launch(assets, out, "--max_steps", 400, "--save_steps", 0, "--gradient_accumulation_steps", 1,
                     "--resume_from_checkpoint", "latest", "--stop_after_steps", saved[0] + 1)
    assert f"resumed from {out / f'checkpoint-{saved[0]}'}" in resumed["stdout"]
    assert complete_checkpoints(out) == [saved[0], saved[0] + 1]


def test_the_launchers_death_takes_the_trainer_with_it_after_a_checkpoint(assets, tmp_path):
    out = tmp_path / "run"
    cmd, env = command(assets, out, "--max_steps", 400, "--save_steps", 0, "--gradient_accumulation_steps", 1)
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(out, 2, launcher)
    launcher.kill()  # SIGKILL: the launcher cannot forward anything
    launcher.wait()
    deadline = time.time() + 60
    while not complete_checkpoints(out) and time.time() < deadline:
        time.sleep(0.2)
    assert complete_checkpoints(out), "the orphaned trainer saved nothing"
    from lvprune.training.run_control import ORPHAN_LOG, OutputLock

    # Its output went on, into the output folder: the launcher (accelerate >= 1.16) had piped its stderr.
    assert "SIGTERM: saving a checkpoint" in (out / ORPHAN_LOG).read_text()

    deadline = time.time() + 60
    while True:  # the trainer exits and releases output_dir
        try:
            OutputLock(out).release()
            break
        except RuntimeError:
            assert time.time() < deadline, "the trainer is still running without its launcher"
            time.sleep(0.2)


# =============================================================================== exact resume


@pytest.fixture(scope="module")
def long_run(assets, tmp_path_factory):
    """12 steps: the whole of epoch 0 and half of epoch 1, uninterrupted."""
    out = tmp_path_factory.mktemp("long") / "run"
    return out, launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5)


@pytest.fixture(scope="module")
def stopped_in_epoch_1(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped-e1") / "run"
    launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
           "--stop_after_steps", 10)
    assert complete_checkpoints(out) == [5, 10] and 10 > STEPS_PER_EPOCH
    return out


class Planted:
    """A pickle that, if ever unpickled, leaves a file behind."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_planted_pickle_is_never_unpickled(assets, stopped_in_epoch_1, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_in_epoch_1, out)
    witness = tmp_path / "unpickled"
    (out / "checkpoint-10" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Planted(witness)))
    cmd, env = command(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
                       "--resume_from_checkpoint", "latest")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "custom_checkpoint_0.pkl, a pickle that lvprune never loads" in proc.stderr
    assert not witness.exists(), "a pickle of the checkpoint was loaded"
    (out / "checkpoint-10" / "custom_checkpoint_0.pkl").unlink()
    (out / "checkpoint-10" / "scheduler.bin").write_bytes(pickle.dumps(Planted(witness)))  # not read either
    launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
           "--resume_from_checkpoint", "latest")
    assert not witness.exists(), "a pickle of the checkpoint was loaded"


def test_resume_in_a_later_epoch_is_bitwise(assets, long_run, stopped_in_epoch_1, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_in_epoch_1, out)
    resumed = launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
                     "--resume_from_checkpoint", "latest")
    assert "resumed from" in resumed["stdout"]
    a, b = weights(out / "final"), weights(long_run[0] / "final")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ"
    steps = [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(set(steps)) == list(range(1, 13)), "metrics.jsonl holds duplicated or missing steps"
    assert metrics(out)[12] | {"step_time_s": 0} == metrics(long_run[0])[12] | {"step_time_s": 0}


def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_resumed(assets, long_run, stopped_in_epoch_1,
                                                                         tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_in_epoch_1, out)
    damaged = out / "checkpoint-10" / "pruner" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a truncated file
    resumed = launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
                     "--resume_from_checkpoint", "latest")
    assert f"cannot resume from {out / 'checkpoint-10'}" in resumed["stdout"]
    assert f"resumed from {out / 'checkpoint-5'} at step 5" in resumed["stdout"]
    a, b = weights(out / "final"), weights(long_run[0] / "final")
    assert all(torch.equal(a[k], b[k]) for k in a), "the run resumed from the older checkpoint differs"


def test_resume_under_another_split_of_the_same_global_batch(assets, long_run, stopped_in_epoch_1, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_in_epoch_1, out)
    launch(assets, out, "--gradient_accumulation_steps", 1, "--max_steps", 12, "--save_steps", 5,
           "--resume_from_checkpoint", "latest", processes=2)
    a, b = weights(out / "final"), weights(long_run[0] / "final")
    # 2 processes x 1 average what 1 process x 2 accumulates: equal up to float rounding.
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_relaunching_a_finished_run_changes_nothing(assets, long_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(long_run[0], out)
    before = {name: tree_digest(out / name) if (out / name).is_dir() else (out / name).read_bytes()
              for name in ("final", "metrics.jsonl", "train_summary.json")}
    relaunched = launch(assets, out, "--gradient_accumulation_steps", 2, "--max_steps", 12, "--save_steps", 5,
                        "--resume_from_checkpoint", "latest")
    assert "already holds a finished run" in relaunched["stdout"]
    after = {name: tree_digest(out / name) if (out / name).is_dir() else (out / name).read_bytes() for name in before}
    assert after == before
