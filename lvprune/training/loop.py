"""The training loop: LVPruning's decision modules on a frozen vision-language model (paper §3: only the pruner
trains), under accelerate (DDP, DeepSpeed ZeRO-2/3) or on one CPU.

    accelerate launch -m lvprune.training --base_model llava-hf/llava-1.5-7b-hf --data_path train.json ...
    lvprune.training.train(TrainConfig(...))          # in-process

Settings: `TrainConfig` (dataclass defaults <- `--config` YAML <- `--key value`). The run writes
`output_dir/checkpoint-<step>/` every `save_steps` (resumable with `--resume_from_checkpoint latest`),
`output_dir/final/` (the pruner, its model card, and the LoRA adapter if any), TensorBoard logs under
`output_dir/logs/`, `metrics.jsonl` and `train_summary.json`; `--push_to_hub REPO_ID` uploads `final/`.

Determinism: the data order depends on (seed, epoch) only, and the Gumbel noise of global micro-batch k is
drawn right after seeding with (seed, k). A run therefore computes the same updates whether it is resumed or
not, and whether its global batch is spread over processes or over accumulation steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging as transformers_logging

from lvprune.data.llava_format import load_llava_dataset
from lvprune.data.records import NoRecords
from lvprune.families import Backbone
from lvprune.methods.lvpruning import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.training import saving
from lvprune.training.bases import UnusableBase, load_base
from lvprune.training.config import TrainConfig, parse_config
from lvprune.training.data import INDEX_KEY, build_dataloader, micro_batch_index, micro_batches
from lvprune.training.deepspeed_support import configure_deepspeed
from lvprune.training.health import DivergenceError, check_finite_weights, finite_step
from lvprune.training.lora import add_lora, lora_config
from lvprune.training.metrics import Resources, TrainMetrics
from lvprune.training.publish import check_push_settings, export
from lvprune.training.run_control import OutputInUse, StopSignals
from lvprune.training.run_files import SUMMARY_FILE, finished_run, prepare_output_dir, resume

# =============================================================================== helpers


class DeepSpeedNeedsGPUs(RuntimeError):
    """An accelerate DeepSpeed config on a machine without CUDA: accelerate would drop it and train as plain DDP."""


def make_accelerator(config) -> Accelerator:
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")  # accelerate launch's
    if deepspeed and not torch.cuda.is_available():
        raise DeepSpeedNeedsGPUs(
            "this accelerate config asks for DeepSpeed, which accelerate runs on CUDA GPUs only; here it would "
            "train as plain DDP without a word. Launch it on GPUs, use configs/accelerate/ddp.yaml on the CPU, "
            "or check the training step under DeepSpeed on the CPU with torchrun --nproc_per_node 2 -m "
            "lvprune.training.deepspeed_check --out check.json.")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no GPU
    # The accumulation window is counted in micro-batches across epochs (see `micro_batches`), so an epoch's
    # end must not force an early optimizer step: sync_with_dataloader=False.
    return Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False),
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        cpu=not torch.cuda.is_available(),
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=str(Path(config.output_dir) / "logs")),
    )


def cpu_share() -> int:
    """This process's share of the cores it may run on: `accelerate launch` sets OMP_NUM_THREADS=1 when it is
    not given, so torch's own default would leave all but one core idle."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, len(os.sched_getaffinity(0)) // local_processes)


def build_pruner(config, base, base_name: str) -> LVPrunerModel:
    """A freshly initialised pruner for `base`; its weights depend on `config.seed` only."""
    overrides = dict(keep_ratios=config.keep_ratios, gumbel_tau=config.gumbel_tau, ratio_loss=config.ratio_loss,
                     lambda_causal=config.lambda_causal, lambda_ratio=config.lambda_ratio,
                     base_model_name_or_path=base_name)
    if config.after_layers is not None:
        overrides["after_layers"] = config.after_layers
    torch.manual_seed(config.seed)
    return LVPrunerModel(LVPrunerConfig.from_base_config(base.config, **overrides))


def load_data(config, accelerator, processor, backbone: Backbone):
    """The training dataset: its records checked once per version of the data, by the main process first (the
    others wait and reuse its check, `lvprune.data.check`); images are decoded on access."""
    json_path, image_folder = config.data_path, config.image_folder or "."
    prefix = f"[process {accelerator.process_index}] " if accelerator.num_processes > 1 else ""
    with accelerator.main_process_first():
        dataset, stats = load_llava_dataset(json_path, image_folder, processor, max_length=config.max_length,
                                            backbone=backbone, num_proc=config.data_num_proc or None,
                                            cache_dir=config.data_cache_dir, log=lambda line: print(prefix + line))
    accelerator.print(f"data: {json_path}: {stats.summary()}")
    return str(json_path), dataset


def noise_seed(seed: int, micro_batch: int) -> int:
    """Seed of the Gumbel noise of global micro-batch `micro_batch`."""
    return seed * 2**32 + micro_batch


def micro_step(accelerator, config, model, local_batch, step: int, metrics) -> torch.Tensor:
    """Forward and backward of one micro-batch `(local_index, batch)` inside the accumulation window.

    The Gumbel noise is drawn after seeding with the micro-batch's global index, so it does not depend on how
    the global batch is split over processes and accumulation steps, nor on where a run was resumed.
    """
    local, batch = local_batch
    micro = micro_batch_index(local, accelerator.process_index, accelerator.num_processes)
    if config.record_samples:
        record_samples(accelerator, config, step, micro, batch)
    with accelerator.accumulate(model):
        torch.manual_seed(noise_seed(config.seed, micro))
        output = model(**{k: v for k, v in batch.items() if k != INDEX_KEY})
        accelerator.backward(output.loss)
    metrics.update(output)
    return output.loss.detach()


def log(accelerator, config, step: int, values: dict) -> None:
    accelerator.log(values, step=step)
    if accelerator.is_main_process:
        with open(Path(config.output_dir) / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def record_samples(accelerator, config, step: int, micro: int, batch: dict) -> None:
    path = Path(config.output_dir) / f"samples-rank{accelerator.process_index}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "micro_batch": micro, "samples": batch[INDEX_KEY].tolist()}) + "\n")


def report(accelerator, output_dir: Path, summary: dict) -> None:
    """Write `train_summary.json` and print the run's speed and memory."""
    if accelerator.is_main_process:
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    cuda = f", peak CUDA {summary['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in summary else ""
    accelerator.print(f"step time {summary['step_s']:.3f} s (first {summary['first_step_s']:.3f} s), "
                      f"peak RSS {summary['peak_rss_mib']:.0f} MiB{cuda}")


# =============================================================================== main


def train_steps(accelerator, config, model, optimizer, scheduler, stream, trainable, steps, metrics, output_dir,
                resources) -> tuple[int, dict]:
    """Optimizer steps `steps` (a range); returns (the last step done, its logged metrics).

    A step whose loss or gradient norm is not finite makes no update; more than `max_nonfinite_steps` of them
    stop the run (DivergenceError). SIGTERM / SIGINT save a checkpoint after the current step and stop.
    """
    stop = StopSignals(output_dir)
    progress = tqdm(steps, initial=steps.start, total=steps.stop, desc="train",
                    disable=not accelerator.is_local_main_process)
    accum, skipped, last, done = config.gradient_accumulation_steps, 0, {}, steps.start
    for step in progress:
        resources.start_step()
        loss = sum(micro_step(accelerator, config, model, next(stream), step + 1, metrics) for _ in range(accum))
        assert accelerator.sync_gradients, "an optimizer step must close an accumulation window"
        grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
        finite, total, norm, signals = finite_step(accelerator, loss, grad_norm, stop.pending)
        if finite:
            optimizer.step()
        else:
            skipped += 1
            accelerator.print(f"step {step + 1}: loss {total} and gradient norm {norm}: not finite, no update "
                              f"({skipped} such steps; max_nonfinite_steps={config.max_nonfinite_steps})")
            if skipped > config.max_nonfinite_steps:
                raise DivergenceError(
                    f"training diverged at step {step + 1} (loss {total}, gradient norm {norm}); nothing was saved "
                    f"after step {step}. Lower learning_rate, check max_grad_norm and the data, or allow skipped "
                    "steps with max_nonfinite_steps.")
        scheduler.step()
        optimizer.zero_grad()
        step_time = resources.end_step()
        done = step + 1
        if done % config.logging_steps == 0 or done == steps.stop:
            last = {**metrics.compute(), "lr": scheduler.get_last_lr()[0], "step_time_s": step_time}
            if grad_norm is not None:
                last["grad_norm"] = norm
            log(accelerator, config, done, last)
            progress.set_postfix(loss=f"{last['loss']:.4f}", kept=f"{last['kept_fraction/stage_0']:.2f}")
        stopping = stop.agreed(signals)
        scheduled = (config.save_steps and done % config.save_steps == 0) or done == config.stop_after_steps
        if scheduled or stopping:
            check_finite_weights(trainable, f"the trainable weights after step {done}")
            path = saving.save_checkpoint(accelerator, output_dir, done, keep=config.save_total_limit)
            if stopping:
                accelerator.print(f"stopped after step {done}; resume with the same command plus "
                                  f"--resume_from_checkpoint latest (saved {path})")
                accelerator.end_training()
                sys.exit(stop.exit_code)
    return done, last


def train(config: TrainConfig, prepare=None, after_export=None) -> dict:
    """Run the training `config` describes; returns its summary (what `train_summary.json` holds).

    prepare: `prepare(config, accelerator) -> config`, run by the main process first (the others wait), e.g. to
        make a base or a data set the config names; after_export: `after_export(config, accelerator, base_name,
        final_folder)`, run by every process after the export (e.g. a benchmark of the new pruner).
    """
    transformers_logging.disable_progress_bar()  # one bar per saved or loaded file; the run has its own
    check_push_settings(config)
    accelerator = make_accelerator(config)
    finished = finished_run(Path(config.output_dir))
    if finished is not None:
        accelerator.print(f"{config.output_dir} already holds a finished run ({finished['step']} steps, exported "
                          f"to {Path(config.output_dir) / 'final'}); nothing to do. Use another output_dir to train "
                          "again.")
        return finished
    if accelerator.device.type == "cpu":
        torch.set_num_threads(config.cpu_threads or cpu_share())
    output_dir, _lock = prepare_output_dir(accelerator, config)
    if prepare is not None:
        with accelerator.main_process_first():
            config = prepare(config, accelerator)

    # ---------------------------------------------------------------- frozen base + trainable pruner (+ LoRA)
    base_name, base, processor, backbone = load_base(config)
    pruner = build_pruner(config, base, base_name)
    model = LVPruningForTraining(base, pruner)  # freezes the base
    lora = lora_config(config, base_name) if config.lora_r else None
    if lora is not None:
        adapted = add_lora(base, lora)
        accelerator.print(f"LoRA r={config.lora_r} on {len(adapted)} language-model modules")
    trainable = [p for p in model.parameters() if p.requires_grad]
    accelerator.print(f"base {base_name}: {sum(p.numel() for p in model.base_model.parameters()):,} parameters, "
                      f"trainable {sum(p.numel() for p in trainable):,} (pruner stages after layers "
                      f"{pruner.config.after_layers}, keep ratios {pruner.config.keep_ratios})")

    # ---------------------------------------------------------------- data
    data_name, dataset = load_data(config, accelerator, processor, backbone)
    loader, sampler = build_dataloader(dataset, processor.tokenizer.pad_token_id, config, backbone.token_inputs,
                                       accelerator.device.type)

    # ---------------------------------------------------------------- optimizer and schedule
    adamw = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    configure_deepspeed(accelerator, config)
    model, optimizer, loader = accelerator.prepare(model, adamw, loader)
    accum = config.gradient_accumulation_steps
    total_steps = config.max_steps or max(1, int(config.num_train_epochs * len(loader)) // accum)
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    # Stepped once per optimizer step by this loop (a prepared scheduler would step once per process). It is
    # not saved in checkpoints (accelerate would pickle it): a resumed run rebuilds it from the step.
    scheduler = get_cosine_schedule_with_warmup(adamw, warmup_steps, total_steps)
    unwrapped = accelerator.unwrap_model(model)
    saving.register_hooks(accelerator, unwrapped, lora)
    global_batch = config.per_device_batch_size * accelerator.num_processes * accum
    accelerator.print(f"{total_steps} steps of global batch {global_batch} = {config.per_device_batch_size} per "
                      f"device x {accelerator.num_processes} processes x {accum} accumulation; warm-up {warmup_steps}")

    # ---------------------------------------------------------------- resume
    start_step = resume(accelerator, config, output_dir, scheduler, trainable)
    accelerator.init_trackers("lvprune", config={k: str(v) for k, v in config.to_dict().items()})

    # ---------------------------------------------------------------- training loop
    model.train()
    metrics = TrainMetrics(pruner.config.num_stages, accelerator.device)
    resources = Resources()
    stream = micro_batches(accelerator, loader, sampler, start=start_step * accum)
    stop = min(total_steps, config.stop_after_steps or total_steps)
    _, last = train_steps(accelerator, config, model, optimizer, scheduler, stream, trainable,
                          range(start_step, stop), metrics, output_dir, resources)

    # ---------------------------------------------------------------- export and report
    digests = saving.replica_digests(accelerator, trainable)
    summary = {"step": stop, "total_steps": total_steps, "global_batch": global_batch, **last,
               **resources.summary(), "processes": accelerator.num_processes,
               "replicas_in_sync": len(set(digests)) == 1, "trainable_digests": digests}
    if not summary["replicas_in_sync"]:
        accelerator.print(f"WARNING: the processes ended with different trainable weights: {digests}")
    if stop == total_steps:
        check_finite_weights(trainable, "the final trainable weights")
        final = export(accelerator, config, unwrapped, lora, data_name, summary)
        accelerator.print(f"exported the pruner to {final}")
        if after_export is not None:
            after_export(config, accelerator, base_name, final)
        summary["finished"] = True
    accelerator.end_training()
    report(accelerator, output_dir, summary)
    return summary


STOPS = (DeepSpeedNeedsGPUs, DivergenceError, NoRecords, OutputInUse, saving.ResumeError, saving.UnsafeCheckpoint, UnusableBase)
"""The errors a run stops with by saying what to do (no traceback)."""


def main(argv=None, cls=TrainConfig, default_file: Path | None = None, prog: str | None = None, **hooks) -> dict:
    """Parse the command line into `cls` (a `TrainConfig`) and `train`; a `STOPS` error exits with status 1 and
    its message."""
    try:
        config = parse_config(argv, cls, default_file, prog)  # every setting validated before anything is touched
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog or 'lvprune.training'}: error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        return train(config, **hooks)
    except STOPS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
