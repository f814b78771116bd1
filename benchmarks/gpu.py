"""The GPU check, one command: LLaVA-1.5-7B's real shape (random weights, no download) in bf16, then the training
script under DeepSpeed.

    timeout 540 python benchmarks/gpu.py --out gpu-report     # batches 1, 8, 32; sdpa, and flash_attention_2 if installed
    python benchmarks/gpu.py --batches 8 --attn sdpa --new_tokens 64 --train false

First, pruned `generate()` with nothing pruned (LVPruning at keep ratios 1, PLPHP at r 1) is held to the stock
model's tokens. Then, for each attention implementation,

it builds the model from `configs/models/llava-1.5-7b/config.json` directly on the device and runs
`benchmarks/speed.py`'s table: prefill ms, decode ms/token, KV MiB and peak
memory (`torch.cuda.max_memory_allocated`), each against the stock model and its FLOPs or bytes limit;
tokens/s follow from the decode column (batch / ms per token). Last, `accelerate launch` runs the training
script for a few steps on a tiny random base under DeepSpeed ZeRO-2 and ZeRO-3 on one GPU, and its losses are
held to the plain single-process run's (without CUDA, accelerate cannot run DeepSpeed: that part says so).
`--out DIR` writes gpu.json and gpu.md. `--reduced` keeps the config's proportions at a CPU-sized width and
depth (the test suite runs it that way, on the CPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from speed import measure_all, methods_for
from transformers import LlavaConfig, LlavaForConditionalGeneration

from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPPress, pruning
from lvprune.families.tiny import make_batch
from lvprune.utils.command_line import build_parser, doc, parse

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "models" / "llava-1.5-7b"
TRAIN_STEPS_LOSS_RTOL = 1e-4  # DeepSpeed's fp32 reductions against plain PyTorch's


def build(config_dir, device, dtype, attn: str, reduced: bool):
    """LLaVA with random weights made on `device` in `dtype` (a 7B model is never materialised on the host)."""
    config = LlavaConfig.from_pretrained(config_dir)
    if reduced:  # the same proportions, CPU-sized: 4 layers of width 128 (head dim 64), a 2-layer 64-px tower
        text, vision = config.text_config, config.vision_config
        text.hidden_size, text.num_hidden_layers = 128, 4
        text.num_attention_heads = text.num_key_value_heads = 2
        text.head_dim = 64
        text.intermediate_size = round(128 * 11008 / 4096)
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 64, 128, 2
        vision.num_attention_heads, vision.image_size, vision.patch_size = 2, 96, 4
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def implementations(requested):
    if requested:
        return requested
    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@dataclass
class GPUConfig:
    """The model and what is timed."""

    model_config: str = doc(str(CONFIG), "folder of the config.json the random model is built from")
    batches: list[int] = doc([1, 8, 32], "batch sizes")
    new_tokens: int = doc(32, "decode steps timed")
    repeats: int = doc(3, "rounds; methods take turns in each")
    text_tokens: int = doc(30, "text tokens beside the vision tokens")
    attn: list[str] | None = doc(None, "attention implementations (unset: sdpa, and flash_attention_2 if installed)")
    device: str = doc("cuda", "torch device")
    dtype: Literal["bfloat16", "float16", "float32"] = doc("bfloat16", "weights and activations")
    reduced: bool = doc(False, "a CPU-sized model of the same proportions")
    train: bool = doc(True, "run the training script under DeepSpeed ZeRO-2 and ZeRO-3 against the plain run "
                      "(needs CUDA)")
    train_steps: int = doc(3, "optimizer steps of each training run")
    out: str | None = doc(None, "folder for gpu.json and gpu.md (unset: print only)")


@torch.no_grad()
def nothing_pruned_matches_stock(model, args) -> dict:
    """Greedy tokens of the stock model and of pruned `generate()` keeping everything, on a mixed batch."""
    torch.manual_seed(0)
    pruner = LVPrunerModel(LVPrunerConfig.from_base_config(model.config)).eval().to(model.device, model.dtype)
    batch = make_batch(model.config, [1, 2, 0], [args.text_tokens] * 3, seed=1)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                  suppress_tokens=[model.config.image_token_id])
    stock = model.generate(**batch, **greedy)
    with pruning(model, pruner, keep_ratios=[1.0] * pruner.config.num_stages, press=PLPHPPress(r=1.0, delta_r=0.0)):
        pruned = model.generate(**batch, **greedy)
    equal = bool(torch.equal(stock, pruned))
    print(f"nothing pruned, {args.dtype}: generate() {'equals' if equal else 'DIFFERS FROM'} the stock tokens "
          f"({stock.shape[0]} prompts x {args.new_tokens} tokens)", flush=True)
    return {"equal": equal, "tokens": list(stock.shape)}


def train_run(launcher: str, out: Path, steps: int) -> dict:
    """`accelerate launch` of the training script on a tiny random base; returns its exit and losses per step."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{launcher}.yaml"), "--num_processes", "1", "train/train.py",
           "--config", "configs/tiny-cpu.yaml", "--output_dir", str(out), "--max_steps", str(steps),
           "--report_to", "none", "--assets_dir", str(out.parent / "assets")]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if proc.returncode == 0 else []
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return {"returncode": proc.returncode, "losses": [row["loss"] for row in rows],
            "error": (errors or proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else ""}


def deepspeed_matches_plain(steps: int) -> dict:
    """ZeRO-2 and ZeRO-3 runs of the training script against the plain single-process run (CUDA only)."""
    if not torch.cuda.is_available():
        print("training under DeepSpeed: skipped, accelerate runs DeepSpeed on CUDA GPUs only "
              "(lvprune.training refuses such a launch without CUDA)", flush=True)
        return {"skipped": "no CUDA"}
    with tempfile.TemporaryDirectory() as scratch:
        runs = {name: train_run(name, Path(scratch) / name, steps)
                for name in ("single", "deepspeed_zero2", "deepspeed_zero3")}
    plain = runs["single"]["losses"]
    for name, run in runs.items():
        run["matches_plain"] = bool(plain) and len(run["losses"]) == len(plain) and all(
            abs(a - b) <= TRAIN_STEPS_LOSS_RTOL * abs(b) for a, b in zip(run["losses"], plain))
        print(f"training, {name}: exit {run['returncode']}, losses {run['losses']}, "
              f"{'equal to' if run['matches_plain'] else 'NOT equal to'} the plain run {run['error']}", flush=True)
    return runs


def write_report(folder: Path, report: dict) -> None:
    """gpu.json (everything) and gpu.md (the stock check, the speed tables' medians and the training check)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# GPU check: {report['device']}", "",
             f"Nothing pruned, {report['dtype']}: generate() equals the stock tokens: {report['stock_check']['equal']}",
             ""]
    for attn, found in report["speed"].items():
        lines += [f"## {attn}", "", "| batch | method | prefill ms | decode ms/token | KV MiB | peak MiB |",
                  "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for batch, methods in found["results"].items():
            for name, rounds in methods.items():
                median = sorted(rounds, key=lambda r: r["prefill"])[len(rounds) // 2]
                kv = found["costs"][batch][name]["kv"] / 2**20
                lines.append(f"| {batch} | {name} | {median['prefill'] * 1e3:.1f} | {median['decode'] * 1e3:.2f} | "
                             f"{kv:.1f} | {max(r['peak'] for r in rounds) / 2**20:.0f} |")
        lines.append("")
    lines += ["## Training under DeepSpeed (one GPU, tiny random base)", ""]
    training = report["training"]
    if "skipped" in training:
        lines.append(f"skipped: {training['skipped']}")
    else:
        lines += ["| launcher | exit | losses | equal to the plain run |", "| --- | ---: | --- | --- |"]
        lines += [f"| {name} | {run['returncode']} | {', '.join(f'{x:.6f}' for x in run['losses'])} | "
                  f"{run['matches_plain']} |" for name, run in training.items()]
    lines.append("")
    (folder / "gpu.md").write_text("\n".join(lines))


def main(argv=None) -> dict:
    parser = build_parser(GPUConfig, prog="python benchmarks/gpu.py", description=__doc__.splitlines()[0])
    args = parse(GPUConfig, argv, parser=parser)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device: {device}")
    report = {"device": device, "dtype": args.dtype, "speed": {}}
    for attn in implementations(args.attn):
        model = build(Path(args.model_config), torch.device(args.device), getattr(torch, args.dtype), attn, args.reduced)
        args.layers = model.config.text_config.num_hidden_layers
        if "stock_check" not in report:
            report["stock_check"] = nothing_pruned_matches_stock(model, args)
        print(f"\n## attention: {attn}")
        with torch.no_grad():
            report["speed"][attn] = measure_all(model, methods_for(model), args)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    report["training"] = deepspeed_matches_plain(args.train_steps) if args.train else {"skipped": "--train false"}
    if args.out:
        write_report(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
