"""The reference base shipped in `assets/reference-base`: intact, used by default, and as accurate as its report."""

import json

import pytest

from lvprune.bench.evaluate import evaluate_answers
from lvprune_shapes.dataset import ShapesConfig, make_shapes_dataset
from lvprune_shapes.reference import REPORT_FILE, ReferenceConfig, load_reference, reference_base
from lvprune_shapes.reference.cache import CHECKSUMS, SHIPPED_DIR, sha256, verify_checksums

# The weights of the default build (`lvprune_shapes.reference.reference_base()` with `ReferenceConfig()`): a change
# to them is a change to every figure of the README's benchmark table.
WEIGHTS_SHA256 = "9513b930098a702558c9f799d3e0210b5809cb2a9d734fbfff6909e3a12b0a24"


def test_shipped_files_match_their_checksums():
    assert verify_checksums(SHIPPED_DIR) == []
    listed = {line.split()[1] for line in (SHIPPED_DIR / CHECKSUMS).read_text().splitlines()}
    assert listed == {p.name for p in SHIPPED_DIR.iterdir()} - {CHECKSUMS}
    assert sha256(SHIPPED_DIR / "model.safetensors") == WEIGHTS_SHA256


def test_default_recipe_uses_the_shipped_build_and_rebuilds_a_damaged_one(tmp_path, monkeypatch):
    import lvprune_shapes.reference.cache as cache

    assert reference_base(tmp_path / "empty-cache") == SHIPPED_DIR
    damaged = tmp_path / "shipped"
    damaged.mkdir()
    for path in SHIPPED_DIR.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "config.json").write_text("{}")
    assert verify_checksums(damaged) == ["config.json"]
    monkeypatch.setattr(cache, "SHIPPED_DIR", damaged)
    monkeypatch.setattr(cache, "train_reference", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("trains")))
    assert cache.shipped_reference() is None
    with pytest.raises(RuntimeError, match="trains"):  # a damaged build is rebuilt, never used
        reference_base(tmp_path / "cache")
    monkeypatch.setattr(cache, "SHIPPED_DIR", SHIPPED_DIR)
    with pytest.raises(RuntimeError, match="trains"):  # another recipe is never answered with the shipped build
        reference_base(tmp_path / "other", ReferenceConfig(steps=3))


def test_shipped_base_answers_from_the_image(tmp_path):
    """Fresh test questions: near its report's accuracy, and near chance with the images blanked."""
    report = json.loads((SHIPPED_DIR / REPORT_FILE).read_text())
    model, processor = load_reference(SHIPPED_DIR)
    size = processor.image_processor.crop_size["height"]
    make_shapes_dataset(tmp_path, {"test": 96}, ShapesConfig(image_size=size, seed=123))
    result = evaluate_answers(model, processor, tmp_path / "test.json", tmp_path, progress=False)
    assert result["accuracy"] >= report["accuracy"] - 0.1, result
    assert result["blank_accuracy"] <= 0.5, result
