"""PLPHP when the question comes after the cache is pressed (the context case), on the reference base.

    python benchmarks/context_sweep.py [--test_records 200] [--rates 0.5 0.3]

Each question is answered as a prefix cache serves it: the prompt up to its image's last token is prefilled and
pressed, then the question and the answer are decoded from that cache (kvpress's question-agnostic protocol).
Methods at PLPHP's layer classes and counts (Δr 0.3, α 0.886, β 0.678 from layer 0, the reference base's): the
paper's ranking by the last prompt token's attention (`queries="last"`, here the image's last token), the mean
attention over every prompt query (`queries="all"`), and a random choice of the same number of slots. Prints
accuracy and the KV cache held after the context (% of unpruned).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch

import lvprune
from lvprune import PLPHPConfig
from lvprune.bench.harness import load_base, test_split
from lvprune.bench.questions import encode_question, load_questions
from lvprune.contract import cache_kwarg, output_cache
from lvprune.settings import doc, parse
from lvprune_shapes.bench import ShapesBenchConfig, resolve


@dataclass
class ContextConfig(ShapesBenchConfig):
    """The shapes benchmark's settings (base, test split, cache) plus the sweep's rates."""

    rates: list[float] = doc([0.5, 0.3], "PLPHP's base rates r to sweep (Δr 0.3)")


@dataclass(frozen=True)
class RandomSlots(PLPHPConfig):
    """PLPHP's layer classes and counts, with a random choice of which vision slots each head keeps (drawn from
    torch's generator, which `answer` seeds per question)."""

    def vision_scores(self, scores, vision):
        return torch.rand(scores.shape, device=scores.device)


def answer(model, processor, question, press) -> tuple[str, float]:
    """The answer decoded from the pressed context cache, and that cache's fraction of the unpruned one."""
    inputs = {k: v[None] if k in ("input_ids", "attention_mask") else v
              for k, v in encode_question(question, processor).items()}
    ids = inputs["input_ids"]
    context = int((ids[0] == model.config.image_token_id).nonzero().max()) + 1
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    with torch.no_grad(), (lvprune.pruning(model, press=press) if press is not None else contextlib.nullcontext()):
        out = model(input_ids=ids[:, :context], attention_mask=torch.ones(1, context, dtype=torch.long),
                    pixel_values=inputs["pixel_values"], use_cache=True)
        fraction = model.pruning_stats.kv_cache_fraction if press is not None else 1.0
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   **{cache_kwarg(model): output_cache(out)}, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip(), fraction


def main(argv=None) -> None:
    args = parse(ContextConfig, argv, prog="python benchmarks/context_sweep.py")
    config = resolve(ContextConfig(**{**args.__dict__, "out": args.out or "."}), train_pruner=False)
    model, processor = load_base(config.base)
    questions = load_questions(*test_split(config), limit=config.test_records)
    methods = {"unpruned": None}
    for r in args.rates:
        plphp = PLPHPConfig(r=r, delta_r=0.3, alpha=0.886, beta=0.678, start_layer=0)
        methods[f"r {r}: last query (paper)"] = plphp
        methods[f"r {r}: all queries"] = dataclasses.replace(plphp, queries="all")
        methods[f"r {r}: random slots"] = RandomSlots(**{**plphp.to_dict()})
    print(f"{len(questions)} questions of {config.test_json}; context = the prompt up to its image's last token")
    print("| method | accuracy | KV after the context |")
    print("| --- | ---: | ---: |")
    for name, press in methods.items():
        start, right, fractions = time.perf_counter(), 0, []
        for question in questions:
            text, fraction = answer(model, processor, question, press)
            right += text == question.answer
            fractions.append(fraction)
        print(f"| {name} | {100 * right / len(questions):.1f} | {100 * sum(fractions) / len(fractions):.0f}% |"
              f"  <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
