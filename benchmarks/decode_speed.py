"""Prefill time, per-token decode time and KV bytes of stock vs pruned decoding, side by side.

    python benchmarks/decode_speed.py [--layers 16 --hidden 512 --new-tokens 16 --repeats 2]

A mid-size random LLaVA (576 vision tokens per image, as LLaVA-1.5; fp32 on CPU) is built from config.
The pruner is random too: its ranking is meaningless, but the token counts and so the costs are the real ones.
Rows: stock, LVPruning (0.5, 0.3, 0.1), PLPHP (0.4, 0.3), both; columns at batch 1 and 8.
"""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()
