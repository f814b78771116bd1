"""Prefill time, per-token decode time and KV bytes of stock vs pruned decoding, side by side.

    python benchmarks/decode_speed.py [--layers 16 --hidden 512 --new-tokens 16 --repeats 2]

A mid-size random LLaVA (576 vision tokens per image, as LLaVA-1.5; fp32 on CPU) is built from config.
The pruner is random too: its ranking is meaningless, but the token counts and so the costs are the real ones.
Rows: stock, LVPruning (0.5, 0.3, 0.1), PLPHP (0.4, 0.3), both; columns at batch 1 and 8. A second table
runs a mixed batch (a text-only, a 1-image and a 3-image prompt) against the same prompts one by one: prefill
time and the KV cache held after it, together and summed over the single runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from lvprune import LVPrunerConfig, LVPrunerModel, PLPHPConfig, pruning
from lvprune.contract import cache_kwarg, cache_layers, output_cache
from lvprune.testing import make_batch, tiny_llava


def build(args):
    model = tiny_llava(seed=0, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
                       num_kv_heads=args.hidden // 64, vocab_size=32064, image_size=96, patch_size=4,
                       vision_hidden=64, vision_layers=1)
    torch.manual_seed(0)
    pruner = LVPrunerModel(LVPrunerConfig.from_base_config(model.config, keep_ratios=[0.5, 0.3, 0.1])).eval()
    return model, pruner


def timed(fn, repeats):
    """Median wall time of `fn()` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_loop(model, batch, new_tokens):
    """Greedy decoding by hand from a fresh prefill; returns seconds per decode step (prefill excluded)."""
    out = model(**batch, use_cache=True)
    cache, mask = output_cache(out), batch["attention_mask"]
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **{cache_kwarg(model): cache})
        token = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / new_tokens


@torch.no_grad()
def measure(model, batch, new_tokens, repeats):
    """Prefill seconds, decode seconds per token, KV bytes after prefill (medians over `repeats`)."""
    prefill = timed(lambda: model(**batch, use_cache=True), repeats)
    cache = output_cache(model(**batch, use_cache=True))
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache_layers(cache))
    decode = statistics.median(decode_loop(model, batch, new_tokens) for _ in range(repeats))
    return prefill, decode, kv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--text-tokens", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, pruner = build(args)
    methods = {
        "stock": dict(),
        "lvpruning (0.5,0.3,0.1)": dict(pruner=pruner),
        "plphp (0.4,0.3)": dict(plphp=PLPHPConfig(0.4, 0.3)),
        "both": dict(pruner=pruner, plphp=PLPHPConfig(0.4, 0.3)),
        "both, PLPHP batch allocation": dict(pruner=pruner, plphp=PLPHPConfig(0.4, 0.3, allocation="batch")),
    }
    print(f"model: {args.layers} layers, hidden {args.hidden}, 576 vision + {args.text_tokens} text tokens, fp32, "
          f"{torch.get_num_threads()} threads")
    header = "| method | " + " | ".join(
        f"prefill ms (b={b}) | decode ms/token (b={b}) | KV MiB (b={b})" for b in args.batches) + " |"
    print(header)
    print("|" + "---|" * (1 + 3 * len(args.batches)))
    for name, kwargs in methods.items():
        cells = []
        for size in args.batches:
            batch = make_batch(model.config, [1] * size, [args.text_tokens] * size, seed=size)
            if kwargs:
                with pruning(model, **kwargs):
                    prefill, decode, kv = measure(model, batch, args.new_tokens, args.repeats)
            else:  # the stock model itself, nothing attached
                prefill, decode, kv = measure(model, batch, args.new_tokens, args.repeats)
            cells += [f"{prefill * 1e3:.0f}", f"{decode * 1e3:.1f}", f"{kv / 2**20:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    mixed_batch_table(model, methods, args)


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
    singles = split(batch, images)
    print(f"\nmixed batch: prompts with {', '.join(map(str, images))} images ({args.text_tokens} text tokens each)")
    print("| method | prefill ms, batch | prefill ms, one by one | KV MiB, batch | KV MiB, one by one |")
    print("|---|---|---|---|---|")
    for name, kwargs in methods.items():
        with pruning(model, **kwargs) if kwargs else contextlib.nullcontext():
            together = timed(lambda: model(**batch), args.repeats)
            alone = sum(timed(lambda s=s: model(**s), args.repeats) for s in singles)
            kv, kv_alone = kv_bytes(model, batch), sum(kv_bytes(model, s) for s in singles)
        print(f"| {name} | {together * 1e3:.0f} | {alone * 1e3:.0f} | {kv / 2**20:.1f} | {kv_alone / 2**20:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
