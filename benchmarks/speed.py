"""Speed where users run it: prefill, decode and memory of each method against the stock model, at a shape with
LLaVA-1.5's proportions, each ratio printed beside the limit its FLOPs or bytes allow.

    python benchmarks/speed.py                                  # CPU, fp32: 16 layers, width 512, 576 + 30 tokens
    python benchmarks/speed.py --layers 16 --hidden 1024 --batches 1 8 --new_tokens 32 --repeats 3

The model is random (built from config, no download) and so is the pruner: its ranking is meaningless, but
its token counts, and so the costs, are the real ones. Stages sit at the paper's relative depths (1, 8, 16 of
32). Rows: stock; LVPruning at ρ = 0.6, 0.5, 0.45 (schedule ρ, ρ − 0.2, ρ − 0.4); PLPHP (r 0.4, Δr 0.3, from
layer 2), also with `allocation="batch"` (every sample the same count, so the cache has no filler slots);
LVPruning 0.5 + PLPHP; and `truncated`, the stock model whose cache after the prefill is simply cut
to PLPHP's per-layer lengths (a mask-free cache of the same bytes: what PLPHP's decode should match).

Columns, per batch size: prefill ms (median over rounds, min-max beside it), its speed-up over stock and the
fraction of the speed-up its FLOPs allow (counted by torch's FlopCounterMode); decode ms per token over
`--new_tokens` greedy steps, its speed-up, and the two limits of a decode step: bytes read (weights + KV) and
FLOPs; KV MiB after the prefill; peak RSS above the model's (sampled). A last table runs a mixed batch (a
text-only, a 1-image and a 3-image prompt) against the same prompts one by one: prefill time and KV bytes. Methods take turns in every round, so
a change in machine load hits them alike. `benchmarks/gpu.py` runs the same on a GPU.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPPress, pruning
from lvprune.bench.methods import schedule
from lvprune.bench.profile import SDPA_FORMULAS
from lvprune.core.contract import cache_kwarg, cache_layers, decoder_layers, output_cache
from lvprune.families.tiny import make_batch, tiny_llava
from lvprune.utils.command_line import build_parser, doc, parse

PLPHP = PLPHPPress(r=0.4, delta_r=0.3)


@dataclass
class Method:
    name: str
    kwargs: dict = field(default_factory=dict)  # for `lvprune.pruning`; empty: the stock model
    truncate_like: str | None = None  # stock, with the cache cut to this method's per-layer lengths


def build_model(args, device, dtype):
    """A random LLaVA whose language model has LLaVA-1.5's proportions (head dim 64 at this size, MLP 2.69x)."""
    model = tiny_llava(seed=0, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
                       num_kv_heads=args.hidden // 64, vocab_size=32064, image_size=96, patch_size=4,
                       vision_hidden=64, vision_layers=1, intermediate_size=round(args.hidden * 11008 / 4096))
    return model.to(device=device, dtype=dtype)


def methods_for(model) -> list[Method]:
    torch.manual_seed(0)
    pruner = LVPrunerModel(LVPrunerConfig.from_base_config(model.config)).eval()
    pruner.to(device=model.device, dtype=model.dtype)
    rows = [Method("stock")]
    rows += [Method(f"lvpruning-{rho:g}", dict(pruner=pruner, keep_ratios=schedule(rho))) for rho in (0.6, 0.5, 0.45)]
    rows += [Method("plphp", dict(press=PLPHP)),
             Method("plphp-batch", dict(press=replace(PLPHP, allocation="batch"))),
             Method("lvpruning-0.5+plphp", dict(pruner=pruner, keep_ratios=schedule(0.5), press=PLPHP)),
             Method("truncated", truncate_like="plphp")]
    return rows


# ------------------------------------------------------------------------------------------- measuring


def applied(model, method: Method):
    return pruning(model, **method.kwargs) if method.kwargs else contextlib.nullcontext()


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def layer_lengths(cache) -> list[int]:
    return [layer.keys.shape[-2] for layer in cache_layers(cache)]


def truncate(cache, lengths: list[int]) -> None:
    """Cut a stock cache to `lengths[l]` slots per layer (its first ones): a mask-free cache of those bytes."""
    for layer, length in zip(cache_layers(cache), lengths):
        layer.keys, layer.values = layer.keys[..., :length, :].contiguous(), layer.values[..., :length, :].contiguous()


def decode_steps(model, batch, new_tokens, lengths=None) -> float:
    """Seconds per greedy decode step after a prefill (the prefill excluded)."""
    out = model(**batch, use_cache=True)
    cache, mask = output_cache(out), batch["attention_mask"]
    if lengths is not None:
        truncate(cache, lengths)
        mask = torch.ones(mask.shape[0], lengths[0], dtype=mask.dtype, device=mask.device)  # layer 0 is uncut
    token = out.logits[:, -1:].argmax(-1)
    name = cache_kwarg(model)
    synchronize(model.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **{name: cache})
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    synchronize(model.device)
    return (time.perf_counter() - start) / new_tokens


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms (CPU); CUDA: max_memory_allocated."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        process = psutil.Process()
        self.base = process.memory_info().rss

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss - self.base)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.thread.join()


@torch.no_grad()
def static_costs(model, method: Method, batch) -> dict:
    """Prefill FLOPs, KV bytes and per-layer cache lengths of one prefill (deterministic: measured once)."""
    with applied(model, method):
        with FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS) as counter:
            out = model(**batch, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache_layers(cache))
        return {"flops": counter.get_total_flops(), "kv": kv, "lengths": layer_lengths(cache),
                "slots": [layer.keys.shape[-2] * layer.keys.shape[0] for layer in cache_layers(cache)]}


@torch.no_grad()
def run_round(model, method: Method, batch, new_tokens, lengths) -> dict:
    with applied(model, method), PeakRSS(model.device) as memory:
        prefill = timed(lambda: model(**batch, use_cache=True, logits_to_keep=1), model.device)
        decode = decode_steps(model, batch, new_tokens, lengths)
    return {"prefill": prefill, "decode": decode, "peak": memory.peak}


# ------------------------------------------------------------------------------------------- limits


def decode_limits(model, stock: dict, costs: dict) -> tuple[float, float]:
    """Speed-ups a decode step may reach: by bytes read (weights + KV cache) and by FLOPs (per token)."""
    weights = sum(p.numel() * p.element_size() for p in decoder_layers(model).parameters())
    weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    bytes_limit = (weights + stock["kv"]) / (weights + costs["kv"])
    text = model.config.text_config
    per_slot = 4 * text.hidden_size  # q.k and attn.v over one cached slot, per query, all heads
    dense = 2 * weights / model.dtype.itemsize  # 2 FLOPs per weight, batch 1
    batch = stock["slots"][0] // stock["lengths"][0]
    flops = lambda slots: batch * dense + per_slot * sum(slots)  # noqa: E731
    return bytes_limit, flops(stock["slots"]) / flops(costs["slots"])


def print_table(results: dict, costs: dict, model, batches) -> None:
    for size in batches:
        stock_costs, stock = costs[size]["stock"], results[size]["stock"]
        print(f"\nbatch {size}")
        print("| method | prefill ms (min-max) | speed-up | of FLOPs limit | decode ms/token (min-max) | speed-up | "
              "bytes limit | FLOPs limit | KV MiB | peak MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, rounds in results[size].items():
            c = costs[size][name]
            prefill = [r["prefill"] * 1e3 for r in rounds]
            decode = [r["decode"] * 1e3 for r in rounds]
            p_up = statistics.median(r["prefill"] for r in stock) / statistics.median(r["prefill"] for r in rounds)
            d_up = statistics.median(r["decode"] for r in stock) / statistics.median(r["decode"] for r in rounds)
            flops_limit = stock_costs["flops"] / c["flops"]
            bytes_limit, decode_flops_limit = decode_limits(model, stock_costs, c)
            print(f"| {name} | {statistics.median(prefill):.0f} ({min(prefill):.0f}-{max(prefill):.0f}) | "
                  f"{p_up:.2f}x | {p_up / flops_limit:.0%} of {flops_limit:.2f}x | "
                  f"{statistics.median(decode):.1f} ({min(decode):.1f}-{max(decode):.1f}) | {d_up:.2f}x | "
                  f"{bytes_limit:.2f}x | {decode_flops_limit:.2f}x | {c['kv'] / 2**20:.1f} | "
                  f"{max(r['peak'] for r in rounds) / 2**20:.0f} |", flush=True)


def kv_bytes(model, batch) -> int:
    """K/V bytes held after one prefill of `batch`."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache_layers(output_cache(model(**batch))))


def split(batch, images) -> list[dict]:
    """The prompts of a left-padded batch one by one, without their padding."""
    singles, first = [], 0
    for b, count in enumerate(images):
        valid = batch["attention_mask"][b].bool()
        single = {"input_ids": batch["input_ids"][b:b + 1, valid], "attention_mask": batch["attention_mask"][b:b + 1, valid]}
        if count:
            single["pixel_values"] = batch["pixel_values"][first:first + count]
        singles.append(single)
        first += count
    return singles


def mixed_batch_table(model, methods, args, images=(0, 1, 3)) -> None:
    """Prefill ms and KV MiB of one mixed batch, against the same prompts run one by one (summed)."""
    batch = make_batch(model.config, list(images), [args.text_tokens] * len(images), seed=11)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    singles = split(batch, images)
    print(f"\nmixed batch: prompts with {', '.join(map(str, images))} images ({args.text_tokens} text tokens each)")
    print("| method | prefill ms, batch | prefill ms, one by one | KV MiB, batch | KV MiB, one by one |")
    print("|---|---|---|---|---|")
    for method in methods:
        if method.truncate_like:
            continue
        with applied(model, method):
            together = statistics.median(timed(lambda: model(**batch), model.device) for _ in range(args.repeats))
            alone = sum(statistics.median(timed(lambda s=s: model(**s), model.device) for _ in range(args.repeats))
                        for s in singles)
            kv, kv_alone = kv_bytes(model, batch), sum(kv_bytes(model, s) for s in singles)
        print(f"| {method.name} | {together * 1e3:.0f} | {alone * 1e3:.0f} | {kv / 2**20:.1f} | {kv_alone / 2**20:.1f} |",
              flush=True)


@dataclass
class SpeedConfig:
    """The model's shape and what is timed."""

    layers: int = doc(16, "decoder layers")
    hidden: int = doc(512, "hidden width")
    text_tokens: int = doc(30, "text tokens beside the 576 vision tokens")
    new_tokens: int = doc(32, "decode steps timed")
    repeats: int = doc(3, "rounds; methods take turns in each")
    batches: list[int] = doc([1, 8], "batch sizes")
    threads: int = doc(0, "torch threads (0: torch's default)")
    only: list[str] | None = doc(None, "measure only these rows (stock is always kept)")
    device: str = doc("cpu", "torch device")
    dtype: Literal["float32", "bfloat16", "float16"] = doc("float32", "weights and activations")


def main(argv=None) -> dict:
    parser = build_parser(SpeedConfig, prog="python benchmarks/speed.py", description=__doc__.splitlines()[0])
    args = parse(SpeedConfig, argv, parser=parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with torch.no_grad():
        model = build_model(args, device, dtype)
        methods = [m for m in methods_for(model) if not args.only or m.name in {"stock", *args.only}]
        if any(m.truncate_like and m.truncate_like not in {n.name for n in methods} for m in methods):
            parser.error("truncated needs plphp among --only")
        return measure_all(model, methods, args)


def measure_all(model, methods, args) -> dict:
    print(f"model: {args.layers} layers, hidden {model.config.text_config.hidden_size}, 576 vision + "
          f"{args.text_tokens} text tokens, {model.dtype}, {model.device}, {torch.get_num_threads()} threads; "
          f"{args.new_tokens} decode steps, {args.repeats} rounds")
    results, costs = {}, {}
    for size in args.batches:
        batch = make_batch(model.config, [1] * size, [args.text_tokens] * size, seed=size)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        costs[size] = {m.name: static_costs(model, m, batch) for m in methods if m.truncate_like is None}
        for m in methods:
            if m.truncate_like is not None:
                like = costs[size][m.truncate_like]
                costs[size][m.name] = {**like, "flops": costs[size]["stock"]["flops"]}
        results[size] = {m.name: [] for m in methods}
        for m in methods:  # warm-up: first calls pay for allocations and kernel selection
            run_round(model, m, batch, min(args.new_tokens, 2), costs[size][m.truncate_like]["lengths"]
                      if m.truncate_like else None)
        for _ in range(args.repeats):
            for m in methods:
                lengths = costs[size][m.truncate_like]["lengths"] if m.truncate_like else None
                results[size][m.name].append(run_round(model, m, batch, args.new_tokens, lengths))
    print_table(results, costs, model, args.batches)
    mixed_batch_table(model, methods, args)
    return {"results": results, "costs": costs}


if __name__ == "__main__":
    main()
