"""Run LVPruning's training step under DeepSpeed's own engine at several ZeRO stages, and report.

    torchrun --nproc_per_node 2 -m lvprune.training.deepspeed_check --stages 0 2 3 --out ds_check.json

Accelerate's DeepSpeed integration needs GPUs, so this check drives `deepspeed.initialize` directly; it runs
on CPU over gloo as well as on GPUs over NCCL. For each stage it builds the same tiny random LLaVA (frozen)
and pruner, trains the pruner for `--steps` steps on one repeated micro-batch per process (the same Gumbel
noise each step), and records the losses averaged over processes, a digest of every process's (gathered)
pruner weights and whether the frozen base is bitwise unchanged. Rank 0 writes the report as JSON and each
stage's final pruner weights to `<out>.zero<stage>.safetensors`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from lvprune.families.tiny import make_batch, tiny_llava
from lvprune.methods.lvpruning import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.training.deepspeed_support import gathered
from lvprune.training.saving import weights_digest
from lvprune.utils.command_line import doc, parse


@dataclass
class CheckConfig:
    """What the DeepSpeed check runs."""

    out: str | None = doc(None, "JSON report, written by rank 0 (required)")
    stages: list[int] = doc([2, 3], "ZeRO stages to run")
    steps: int = doc(6, "optimizer steps per stage")
    lr: float = doc(1e-2, "AdamW learning rate")
    keep_ratios: list[float] = doc([0.9, 0.8, 0.7], "far from an untrained pruner's ~[0.5, 0.25, 0.125], so the "
                                   "ratio loss has room to fall")
    seed: int = doc(0, "seed of the pruner and the Gumbel noise")


def ds_config(stage: int, lr: float) -> dict:
    """A DeepSpeed config for one process-local micro-batch, fp32, AdamW, clipping at 1.0."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }


def local_batch(config, rank: int) -> dict:
    """Process `rank`'s micro-batch: one prompt with an image; the last 4 tokens are the supervised answer."""
    batch = make_batch(config, [1], [10], seed=rank)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -4:] = batch["input_ids"][:, -4:]
    return {**batch, "labels": labels}


def build(seed: int, keep_ratios):
    # The tiny LLaVA of the main job's `tiny-random` (its 99-word vocabulary, `<image>` = 4): 64 vision tokens an image.
    base = tiny_llava(seed=0, vocab_size=99, image_size=32)
    base.config.image_token_id = 4
    torch.manual_seed(seed)
    pruner = LVPrunerModel(LVPrunerConfig.from_base_config(base.config, num_heads=4, keep_ratios=keep_ratios))
    return LVPruningForTraining(base, pruner)


def run_stage(stage: int, args, rank: int) -> dict:
    """Train at ZeRO `stage`; returns losses (process mean), pruner digests (per process), base digests."""
    import deepspeed

    model = build(args.seed, args.keep_ratios)
    base_before = weights_digest(model.base_model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config(stage, args.lr))
    engine.train()
    batch = local_batch(model.base_model.config, rank)
    losses, ratio_losses = [], []
    for _ in range(args.steps):
        torch.manual_seed(args.seed * 1000 + rank)  # the same noise every step: a truly repeated batch
        output = engine(**batch)
        engine.backward(output.loss)
        engine.step()
        losses.append(process_mean(output.loss))
        ratio_losses.append(process_mean(output.ratio_loss))
    with gathered(model.parameters(), enabled=stage == 3):
        pruner = {k: v.detach().cpu().clone() for k, v in model.pruner.state_dict().items()}
        base_after = weights_digest(model.base_model.parameters())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, weights_digest(pruner.values()))
    if rank == 0:
        save_file(pruner, f"{args.out}.zero{stage}.safetensors")
    return {"losses": losses, "ratio_losses": ratio_losses, "pruner_digests": digests,
            "base_unchanged": base_before == base_after}


def process_mean(value: torch.Tensor) -> float:
    total = value.detach().float().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def main(argv=None) -> None:
    args = parse(CheckConfig, argv, prog="python -m lvprune.training.deepspeed_check")
    if args.out is None:
        sys.exit("lvprune.training.deepspeed_check: --out FILE is required")
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank = dist.get_rank()
    report = {str(stage): run_stage(stage, args, rank) for stage in args.stages}
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": dist.get_world_size(), "stages": report}, f, indent=1)
        for stage, result in report.items():
            print(f"ZeRO-{stage}: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
