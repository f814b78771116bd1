"""PLPHP's thresholds measured on the reference base: the vision attention profile and the suggested alpha/beta.

    python benchmarks/plphp_thresholds.py [--base DIR] [--questions 128]

Runs the shapes test questions through the base (the reference base by default, trained on first use),
records the last prompt token's vision attention `v_l` per (question, layer), and prints per-layer means and
the thresholds at the 1/3 and 2/3 quantiles (`lvprune.calibration.suggest_thresholds`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lvprune.bench.harness import BenchConfig, test_split
from lvprune.bench.questions import load_questions, prompt_batches
from lvprune.calibration import suggest_thresholds, vision_attention_profile
from lvprune.reference import load_reference, reference_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="base LLaVA folder (default: the reference base)")
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument("--start-layer", type=int, default=2)
    args = parser.parse_args()
    model, processor = load_reference(args.base or reference_base())
    size = processor.image_processor.crop_size["height"]
    questions = load_questions(*test_split(BenchConfig(out=Path(".")), size), limit=args.questions)
    with torch.no_grad():
        profile = vision_attention_profile(model, prompt_batches(questions, processor, batch_size=16))
    print(json.dumps({"questions": len(questions), **suggest_thresholds(profile, args.start_layer)}, indent=1))


if __name__ == "__main__":
    main()
