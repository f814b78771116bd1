"""How much each decoder layer attends to the image (the PLPHP paper's Figure 1), per task, on a reference base.

    python benchmarks/vision_attention.py --base assets/reference-base-v2 --data DIR/test.json --image_folder DIR
        [--records 100] [--queries last] [--figure docs/figures/vision_attention.png]

For each record's first prompt (images and question) it measures, at every decoder layer, v_l: the attention
mass the queries (`--queries last`: the last prompt token, as the paper; `all`: every prompt token) put on the
vision tokens, averaged over heads (`lvprune.methods.plphp.vision_attention_profile`). It prints the per-layer
mean per task (world 2) or question type (world 1) and says whether deep layers *re-attend*: after
some layer from 1 on (a dip), a later layer attends at least 1.5 times as much and 0.05 more (`reattends`; a last
layer that looks away again does not hide it).
PLPHP's layer-adaptive rates rest on that pattern; where it is absent there is nothing to allocate between layers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from lvprune.bench.conversations import conversation_images, first_prompt, load_conversations
from lvprune.bench.harness import load_base
from lvprune.bench.questions import load_questions, single_prompt
from lvprune.families import backbone_for
from lvprune.methods.plphp import vision_attention_profile
from lvprune.utils.command_line import doc, parse


@dataclass
class VisionAttentionConfig:
    base: str | None = doc(None, "the base model's folder (required)")
    data: str | None = doc(None, "a LLaVA-format test split of a reference world (required)")
    image_folder: str | None = doc(None, "the split's image folder (required)")
    records: int = doc(100, "records measured")
    queries: str = doc("last", "whose attention: last (the last prompt token, the paper's) or all (every prompt token)")
    figure: str | None = doc(None, "where to write the plot (PNG); none: no plot")


def reattends(profile: list[float]) -> tuple[bool, int, int]:
    """(re-attends, dip, peak). A dip is any layer from 1 on, its peak the most attentive layer after it (the dip
    itself if last); the profile re-attends where some peak attends at least 1.5 times as much as its dip and 0.05
    more, and the largest such rise is named (else the least attentive layer from 1 on). A last layer that looks
    away again, as the second base's does, does not hide a rise before it."""

    def peak(dip: int) -> int:
        later = range(dip + 1, len(profile))
        return max(later, key=profile.__getitem__) if later else dip

    rises = [(profile[peak(d)] - profile[d], d) for d in range(1, len(profile))
             if profile[peak(d)] >= 1.5 * profile[d] and profile[peak(d)] >= profile[d] + 0.05]
    dip = max(rises)[1] if rises else min(range(1, len(profile)), key=profile.__getitem__)
    return bool(rises), dip, peak(dip)


def prompts_by_group(model, processor, config) -> dict[str, list[dict]]:
    """First prompts grouped by world-2 task or world-1 question type."""
    records = json.loads(Path(config.data).read_text())[: config.records]
    groups = defaultdict(list)
    if records and "task" in records[0].get("qa", [{}])[0]:
        backbone = backbone_for(model.config)
        for conversation in load_conversations(config.data, config.image_folder, config.records):
            images = conversation_images(conversation, blank=False)
            groups[conversation.task].append(first_prompt(conversation, images, processor, backbone))
    else:
        for question in load_questions(config.data, config.image_folder, config.records):
            groups[question.type].append(single_prompt(question, processor))
    return dict(sorted(groups.items()))


def plot(profiles: dict[str, list[float]], queries: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, values in profiles.items():
        axis.plot(range(len(values)), values, marker="o", label=name)
    axis.set_xlabel("decoder layer")
    axis.set_ylabel(f"attention on vision tokens ({queries} queries)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None) -> None:
    config = parse(VisionAttentionConfig, argv, prog="python benchmarks/vision_attention.py")
    if not (config.base and config.data and config.image_folder):
        raise SystemExit("python benchmarks/vision_attention.py: --base, --data and --image_folder are required")
    model, processor = load_base(config.base)
    groups = prompts_by_group(model, processor, config)
    print(f"measuring {sum(map(len, groups.values()))} prompts' attention on the image, layer by layer ...")
    profiles = {}
    with torch.no_grad():
        for name, batches in groups.items():
            profiles[name] = vision_attention_profile(model, batches, config.queries).float().mean(0).tolist()
    profiles["all"] = torch.tensor([v for v in profiles.values()]).mean(0).tolist()
    print("| task | " + " | ".join(f"L{i}" for i in range(len(profiles["all"]))) + " | re-attends |")
    print("| --- |" + " ---: |" * (len(profiles["all"]) + 1))
    for name, values in profiles.items():
        again, low, high = reattends(values)
        verdict = f"yes: L{low} {values[low]:.2f} -> L{high} {values[high]:.2f}" if again else "no"
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {verdict} |")
    if config.figure:
        plot(profiles, config.queries, Path(config.figure))
        print(f"plot: {config.figure}")


if __name__ == "__main__":
    main()
