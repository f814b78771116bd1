"""The second reference base shipped in `assets/reference-base-v2`: intact, the recipe's own build, and as accurate
as its report on fresh conversations, which it cannot answer without its images."""

import dataclasses
import json

import pytest

from lvprune.bench.conversations import evaluate_conversations
from lvprune.bench.harness import load_base
from lvprune_shapes.reference.cache import CHECKSUMS, sha256
from lvprune_shapes.reference.world2 import SHIPPED_DIR, World2BaseConfig, shipped_world2_base
from lvprune_shapes.world2 import make_world2_dataset

# The weights `python -m lvprune_shapes.reference.world2` wrote with its defaults: a change to them is a change to
# every world-2 figure in docs/benchmarks.md.
WEIGHTS_SHA256 = "960832e731d1677ad85d2c23cfc38082c40b31358ea4df6d1ec9bea98d066b5a"
REPORT = json.loads((SHIPPED_DIR / "reference_report.json").read_text())


def test_the_second_base_ships_intact_from_the_recipe_s_defaults():
    assert shipped_world2_base() == SHIPPED_DIR  # every listed file matches its checksum
    listed = {line.split()[1] for line in (SHIPPED_DIR / CHECKSUMS).read_text().splitlines()}
    assert listed == {p.name for p in SHIPPED_DIR.iterdir()} - {CHECKSUMS}
    assert sha256(SHIPPED_DIR / "model.safetensors") == WEIGHTS_SHA256
    assert sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) <= 20 * 2**20
    assert REPORT["config"] == json.loads(json.dumps(dataclasses.asdict(World2BaseConfig())))  # tuples as lists
    text = json.loads((SHIPPED_DIR / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] == World2BaseConfig().num_layers >= 8


@pytest.mark.slow
def test_the_second_base_answers_fresh_conversations_from_its_images(tmp_path):
    """40 conversations of a seed the report never saw: near its report's score, with and without the images."""
    model, processor = load_base(SHIPPED_DIR)
    world = dataclasses.replace(World2BaseConfig(), seed=123).world("test")
    make_world2_dataset(tmp_path, {"test": 40}, world)
    seen, blank = (evaluate_conversations(model, processor, tmp_path / "test.json", tmp_path, blank=b, progress=False)
                   for b in (False, True))
    assert seen["overall"] >= REPORT["seen"]["overall"] - 0.1, seen["by_task"]
    assert blank["overall"] <= REPORT["blank"]["overall"] + 0.1, blank["by_task"]
    assert seen["overall"] - blank["overall"] >= 0.3  # it needs its eyes
