"""What checkpoints and exports hold: only what trains (the pruner, and the LoRA adapter if any).

A checkpoint `output_dir/checkpoint-<step>/` is `accelerator.save_state` (optimizer, scheduler, RNG states,
step counter) with the model weights replaced by `pruner/` (`LVPrunerModel.save_pretrained`) and `lora/`, so
it never copies the frozen base. It is written atomically through `lvprune.training.checkpoints`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_file

from lvprune.training import checkpoints as checkpointing
from lvprune.training.deepspeed_support import gathered, is_zero3
from lvprune.training.lora import load_lora, lora_parameters, save_lora

PRUNER_DIR, LORA_DIR = "pruner", "lora"


class UnsafeCheckpoint(ValueError):
    """A checkpoint holds a file lvprune refuses to load."""


class ResumeError(RuntimeError):
    """No checkpoint of the run could be loaded."""


def weights_digest(params) -> str:
    """sha256 of the parameters' bytes, in order: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replica_digests(accelerator, params) -> list[str]:
    """`weights_digest(params)` of every process (ZeRO-3 shards gathered first), in process order."""
    params = list(params)
    with gathered(params, is_zero3(accelerator)):
        local = weights_digest(params)
    return gather_object([local])


def save_trainable(accelerator, model, folder, lora=None) -> None:
    """Write the pruner of `model` (an unwrapped `LVPruningForTraining`) to `folder`, and `folder/lora/`.

    Every process must call it (ZeRO-3 gathers collectively); only the main process writes.
    """
    folder = Path(folder)
    with gathered(model.pruner.parameters(), is_zero3(accelerator)):
        state = {k: v.detach().cpu().clone() for k, v in model.pruner.state_dict().items()}
    model.pruner.save_pretrained(folder, state_dict=state, is_main_process=accelerator.is_main_process)
    if lora is not None:
        with gathered(lora_parameters(model.base_model), is_zero3(accelerator)):
            if accelerator.is_main_process:
                save_lora(model.base_model, lora, folder / LORA_DIR)


def load_trainable(model, folder) -> None:
    """Load what `save_trainable` wrote into `model` (an unwrapped `LVPruningForTraining`)."""
    folder = Path(folder)
    missing, unexpected = model.pruner.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit this pruner: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    if (folder / LORA_DIR).is_dir():
        load_lora(model.base_model, folder / LORA_DIR)


def register_hooks(accelerator, model, lora=None) -> None:
    """Make `accelerator.save_state/load_state` store the trainable parts only (see module docstring)."""

    def save_hook(models, weights, output_dir):
        weights.clear()  # accelerate would otherwise write the whole model, frozen base included
        save_trainable(accelerator, model, Path(output_dir) / PRUNER_DIR, lora)

    def load_hook(models, input_dir):
        models.clear()
        if accelerator.distributed_type != DistributedType.DEEPSPEED:  # DeepSpeed restores its own engine
            load_trainable(model, Path(input_dir) / PRUNER_DIR)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, output_dir, step: int, keep: int = 0) -> Path:
    """Atomically save the training state after optimizer step `step`; keep the newest `keep` (0: all)."""
    if accelerator.is_main_process:
        checkpointing.begin_checkpoint(output_dir, step)
    accelerator.wait_for_everyone()
    staging = checkpointing.staging_dir(output_dir, step)
    kwargs = {"exclude_frozen_parameters": True} if accelerator.distributed_type == DistributedType.DEEPSPEED else {}
    accelerator.save_state(str(staging), **kwargs)
    accelerator.wait_for_everyone()
    final = checkpointing.checkpoint_dir(output_dir, step)
    if accelerator.is_main_process:
        checkpointing.commit_checkpoint(output_dir, step, processes=accelerator.num_processes)
        checkpointing.rotate_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path, scheduler, accumulation_steps: int) -> int:
    """Restore the training state from a complete checkpoint; returns its optimizer step.

    Nothing in it is unpickled beyond what `torch.load(weights_only=True)` allows: the schedule is not saved
    (accelerate would pickle it) but rebuilt from the step, and a planted `custom_checkpoint_*.pkl` is never
    read. The accumulation counter is set from the step, so a run may resume under another split of the same
    global batch into processes and accumulation steps.
    """
    pickles = sorted(p.name for p in Path(path).glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise UnsafeCheckpoint(f"{path} holds {', '.join(pickles)}, a pickle that lvprune never loads (it could run code; "
                         "lvprune 0.1 wrote its schedule there). Delete it to resume: the schedule is rebuilt from "
                         "the step.")
    kwargs = {"load_module_strict": False} if accelerator.distributed_type == DistributedType.DEEPSPEED else {}
    accelerator.load_state(str(path), **kwargs)
    step = checkpointing.checkpoint_step(path)
    restore_schedule(scheduler, step)
    accelerator.step = step * accumulation_steps  # micro-batches seen by this process's accumulation window
    return step


def restore_schedule(scheduler, step: int) -> None:
    """Put a `LambdaLR` schedule where it is after `step` optimizer steps (its state is a function of the step)."""
    scheduler.last_epoch = step
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
