"""Train LVPruning's decision modules on a frozen vision-language model (paper §3: only the pruner trains).

    accelerate launch train/train.py --config configs/tiny-cpu.yaml                  # seconds, on CPU
    accelerate launch train/train.py --base_model tiny-random-qwen2_vl               # any supported family
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \\
        train/train.py --config configs/llava-1.5-7b.yaml --output_dir outputs/llava-1.5-7b-lvpruner

Settings: `train_config.TrainConfig` (dataclass defaults <- `--config` YAML <- `--key value`). The run writes
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
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup
from transformers.utils import logging as transformers_logging

import saving
from assets import materialise_shapes, materialise_tiny_base
from deepspeed_support import configure_deepspeed
from health import DivergenceError, check_finite_weights, finite_step
from lora import add_lora, lora_config
from lvprune import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.backbones import Backbone, backbone_for
from lvprune.backbones.llava import CHAT_TEMPLATE as LLAVA_TEMPLATE
from lvprune.data.llava_format import load_llava_dataset
from lvprune.data.records import NoRecords
from lvprune.reference import reference_base
from publish import check_push_settings, export
from run_control import OutputInUse, StopSignals
from run_files import SUMMARY_FILE, finished_run, prepare_output_dir, resume
from train_config import REFERENCE, SYNTHETIC_SHAPES, TINY_RANDOM, parse_config, tiny_family
from train_data import INDEX_KEY, build_dataloader, micro_batch_index, micro_batches
from train_metrics import Resources, TrainMetrics

TEXT_INPUTS = ("input_ids", "attention_mask", "labels")


# =============================================================================== helpers


def make_accelerator(config) -> Accelerator:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no GPU
    # The accumulation window is counted in micro-batches across epochs (see `micro_batches`), so an epoch's
    # end must not force an early optimizer step: sync_with_dataloader=False.
    return Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False),
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        cpu=not torch.cuda.is_available(),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=str(Path(config.output_dir) / "logs")),
    )


def cpu_share() -> int:
    """This process's share of the cores it may run on: `accelerate launch` sets OMP_NUM_THREADS=1 when it is
    not given, so torch's own default would leave all but one core idle."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, len(os.sched_getaffinity(0)) // local_processes)


def load_base(config, accelerator) -> tuple[str, torch.nn.Module, object, Backbone]:
    """(name, frozen base, processor, its backbone); `tiny-random[-<model_type>]` and `reference` are
    materialised first (once, by the main process). An unsupported family is refused from its config."""
    name = config.base_model
    if (family := tiny_family(name)) is not None or name == REFERENCE:
        with accelerator.main_process_first():
            name = str(materialise_tiny_base(config.assets_dir, family) if family is not None
                       else reference_base(Path(config.assets_dir) / "reference-base"))
    try:
        backbone = backbone_for(AutoConfig.from_pretrained(name))
    except ValueError as error:
        raise UnusableBase(str(error)) from None
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    base = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, attn_implementation="sdpa")
    processor = load_processor(name, backbone)
    if config.chat_template is not None:
        processor.chat_template = LLAVA_TEMPLATE if config.chat_template == "llava-1.5" else backbone.chat_template
    elif "{% generation %}" not in (processor.chat_template or ""):
        raise UnusableBase(f"{name}'s chat template does not mark assistant turns with {{% generation %}}, which "
                         f"training needs to label the answers: pass --chat_template family (lvprune's copy of the "
                         f"{backbone.family} template, which does) or a processor whose template does.")
    return name, base, processor, backbone


class UnusableBase(Exception):
    """The base cannot be trained on as given (its family, its processor, its chat template); says what to do."""


def load_processor(name: str, backbone: Backbone):
    try:
        return AutoProcessor.from_pretrained(name)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        raise UnusableBase(f"{backbone.family}'s processor needs torchvision (its video processor): install one "
                          "built for your torch, e.g. pip install 'lvprune[video]'.") from error


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
    """The training dataset (records checked once, images decoded on access)."""
    json_path, image_folder = config.data_path, config.image_folder or "."
    if json_path == SYNTHETIC_SHAPES:
        with accelerator.main_process_first():
            json_path, image_folder = materialise_shapes(config.assets_dir, config.synthetic_samples)
    dataset, stats = load_llava_dataset(json_path, image_folder, processor, max_length=config.max_length,
                                        backbone=backbone)
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


def benchmark(accelerator, config, base_name: str, final: Path) -> None:
    """Run `lvprune bench` on the base and the exported pruner (main process) and print its table."""
    if accelerator.is_main_process:
        from lvprune.bench.cli import plphp_config
        from lvprune.bench.harness import BenchConfig, run

        out = Path(config.output_dir) / "bench"
        accelerator.print("benchmarking the base and the exported pruner against the other methods"
                          + (" (about 2 minutes on 2 CPU cores)" if config.evaluate == "full" else ""))
        run(BenchConfig(out=out, base=Path(base_name), pruner=final, quick=config.evaluate == "quick",
                        cache_dir=Path(config.assets_dir), plphp=plphp_config(config.bench_plphp)))
        accelerator.print((out / "results.md").read_text())
    accelerator.wait_for_everyone()


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
    stop = StopSignals()
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


def main(argv=None) -> dict:
    # ---------------------------------------------------------------- configuration
    config = parse_config(argv)  # every setting validated before anything is loaded or deleted
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

    # ---------------------------------------------------------------- frozen base + trainable pruner (+ LoRA)
    base_name, base, processor, backbone = load_base(config, accelerator)
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
    loader, sampler = build_dataloader(dataset, processor.tokenizer.pad_token_id, config, backbone.token_inputs)

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
        if config.evaluate != "none":
            benchmark(accelerator, config, base_name, final)
        summary["finished"] = True
    accelerator.end_training()
    report(accelerator, output_dir, summary)
    return summary


if __name__ == "__main__":
    try:
        main()
    except (DivergenceError, NoRecords, OutputInUse, saving.ResumeError, saving.UnsafeCheckpoint, UnusableBase) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
