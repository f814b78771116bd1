"""`BenchConfig`: what `lvprune bench` measures, a dataclass read like every lvprune configuration
(defaults <- `--config` YAML <- `--key value`, `lvprune.utils.command_line`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lvprune.methods.plphp import PLPHPOptions, PLPHPPress
from lvprune.utils.command_line import doc


@dataclass
class BenchConfig(PLPHPOptions):
    """Every setting of `lvprune bench`: the methods side by side on one base, one pruner and one test split."""

    out: str | None = doc(None, "folder for results.json, results.md and the figures (required)")
    base: str | None = doc(None, "base model folder or Hub id, of a supported family (required)")
    pruner: str | None = doc(None, "trained LVPruning pruner folder or Hub id, for the base (required)")
    test_json: str | None = doc(None, "LLaVA-format test records; each record's first turn is a question whose "
                                "answer is its first gpt turn (required)")
    image_folder: str | None = doc(None, "folder the test records' image paths are relative to (default: the "
                                   "folder of test_json)")
    quick: bool = doc(False, "a smoke test: a few questions and timing rounds (under ~2 minutes)")
    test_records: int = doc(500, "test questions, from the first record on")
    batch_size: int = doc(32, "generation batch for accuracy")
    timing_runs: int = doc(7, "timing rounds; medians are reported")
    timing_repeats: int = doc(3, "back-to-back runs per method and round; the fastest counts")
    timing_batch_size: int = doc(16, "prompts per timed prefill and decode step (1 times single prompts)")
    decode_tokens: int = doc(16, "tokens a timed decode generates")
    kv_samples: int = doc(32, "prompts the KV-cache bytes are averaged over")
    examples: int = doc(4, "questions shown in kept_patches.png")
    fastv_layer: int = doc(2, "FastV's layer K, 1-based")
    kvpress: list[str] = doc([], "kvpress scorers to add as rows kvpress-NAME, restricted to vision slots at "
                             "PLPHP's base rate r (snapkv, tova, expected_attention, knorm, streaming_llm; needs "
                             "kvpress, README: Install)")
    seed: int = doc(0, "seed of the random baseline and of generation")

    def __post_init__(self):
        for name in ("test_records", "batch_size", "timing_runs", "timing_repeats", "timing_batch_size",
                     "decode_tokens", "kv_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        self.plphp_press()  # checks the PLPHP fields

    def plphp_rows(self) -> PLPHPPress:
        """The press of the plphp rows: the PLPHP fields given, `PLPHPPress`'s defaults for the rest but the
        ranking, the paper's (the last prompt token: this benchmark's prompts end with their one question)."""
        return replace(self.plphp_press() or PLPHPPress(), queries=self.plphp_queries or "last")

    def check_complete(self) -> None:
        """Raise `ValueError` naming the required settings not given."""
        missing = [name for name in ("out", "base", "pruner", "test_json") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"lvprune bench needs {', '.join('--' + m for m in missing)} (the shapes benchmark "
                             "with its defaults: python -m lvprune_shapes.bench).")

    def resolved(self) -> "BenchConfig":
        """The config with `quick`'s smaller counts applied."""
        if not self.quick:
            return self
        small = dict(test_records=min(self.test_records, 24), timing_runs=min(self.timing_runs, 2),
                     timing_repeats=1, timing_batch_size=min(self.timing_batch_size, 2),
                     decode_tokens=min(self.decode_tokens, 4), kv_samples=min(self.kv_samples, 4))
        return type(self)(**{**self.__dict__, **small, "quick": False})
