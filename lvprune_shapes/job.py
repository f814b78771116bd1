"""The main job (`make demo`, `accelerate launch train/train.py`): `lvprune.training` with the shapes world's names,
then the benchmark of the exported pruner.

`JobConfig` is `TrainConfig` plus what only this job has: the names `tiny-random[-<model_type>]`, `reference` and
`reference-v2` for `base_model` and `synthetic-shapes` / `synthetic-world2` for `data_path`, made under
`assets_dir` on first use (by the main process; the others wait), and `evaluate`, the benchmark after the export
(of the first reference world, or with `bench_world` 2 of the second: `configs/world2.yaml`). Without `--config`,
`configs/default.yaml` is read: it is the one place that names the project's default run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lvprune.methods.plphp import PLPHPOptions
from lvprune.training import TrainConfig
from lvprune.training import main as train_main
from lvprune.utils.command_line import doc

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
TINY_RANDOM = "tiny-random"
REFERENCE = "reference"
REFERENCE_V2 = "reference-v2"
SYNTHETIC_SHAPES = "synthetic-shapes"
SYNTHETIC_WORLD2 = "synthetic-world2"
Evaluation = Literal["none", "quick", "full"]


@dataclass
class JobConfig(TrainConfig, PLPHPOptions):
    """Every setting of `train/train.py`. The defaults are a tiny random LLaVA on synthetic shapes (seconds on CPU)."""

    base_model: str | None = doc(TINY_RANDOM, "base model of a supported family: a folder or a Hub id; "
                                 "`tiny-random` makes a tiny random LLaVA with its processor under `assets_dir` on "
                                 "first use, `tiny-random-<model_type>` one of another family (e.g. "
                                 "tiny-random-qwen2_vl); `reference` the project's reference base (the shipped one, "
                                 "or trained from scratch on the shapes set and cached under `assets_dir`); "
                                 "`reference-v2` the second reference base (assets/reference-base-v2: 8 layers, "
                                 "1-4 images a prompt)")
    data_path: str | None = doc(SYNTHETIC_SHAPES, "LLaVA-format training records (.json list or .jsonl); "
                                "`synthetic-shapes` generates a small shapes VQA set under `assets_dir` on first use, "
                                "`synthetic-world2` the second world's conversations at the base's image size")
    output_dir: str = doc("outputs/tiny-cpu", "checkpoints, logs and the final export go here")
    synthetic_samples: int = doc(64, "records generated for `synthetic-shapes` / `synthetic-world2`")
    assets_dir: str = doc("outputs/assets", "where `tiny-random`, `reference` and `synthetic-shapes` are made")
    evaluate: Evaluation = doc("none", "after the export, benchmark the base and the new pruner against the other "
                        "methods on the reference world `bench_world`: none, quick (a smoke test) or full; writes "
                        "output_dir/bench")
    bench_world: int = doc(1, "the reference world that benchmark asks: 1 (a short question about one image: "
                           "`lvprune_shapes.bench`) or 2 (3-turn conversations about 1-4 images, answered from the "
                           "pruned cache, per task: `lvprune_shapes.world2_bench`)")

    def check(self) -> None:
        super().check()
        if self.synthetic_samples < 0:
            raise ValueError(f"synthetic_samples={self.synthetic_samples} must be >= 0.")
        if self.bench_world not in (1, 2):
            raise ValueError(f"bench_world={self.bench_world}: 1 (the shapes questions) or 2 (the second world's "
                             "conversations).")
        self.plphp_press()  # checks the PLPHP fields (the benchmark's plphp rows)
        tiny_family(self.base_model)
        if self.base_model == REFERENCE_V2:
            from lvprune_shapes.reference.world2 import shipped_world2_base

            shipped_world2_base()  # there and intact, or refused before anything runs


def tiny_family(base_model: str) -> str | None:
    """The model_type of a `tiny-random[-<model_type>]` base (None for any other base); refuses an unknown one."""
    if base_model == TINY_RANDOM:
        return "llava"
    if not base_model.startswith(TINY_RANDOM + "-"):
        return None
    from lvprune.families import supported

    family = base_model[len(TINY_RANDOM) + 1:]
    if family not in supported():
        raise ValueError(f"base_model={base_model!r}: no supported family {family!r}; tiny bases: "
                         f"{', '.join(f'{TINY_RANDOM}-{t}' for t in sorted(supported()))}.")
    return family


def prepare(config: JobConfig, accelerator) -> JobConfig:
    """The config with the shapes world's names made into folders (run by the main process first)."""
    from lvprune_shapes.assets import materialise_shapes, materialise_tiny_base, materialise_world2
    from lvprune_shapes.bench import image_size
    from lvprune_shapes.reference import reference_base
    from lvprune_shapes.reference.world2 import shipped_world2_base

    base = config.base_model
    if (family := tiny_family(base)) is not None:
        base = str(materialise_tiny_base(config.assets_dir, family))
    elif base == REFERENCE:
        base = str(reference_base(Path(config.assets_dir) / "reference-base"))
    elif base == REFERENCE_V2:
        base = str(shipped_world2_base())
    changes = {"base_model": base}
    if config.data_path == SYNTHETIC_SHAPES:
        json_path, folder = materialise_shapes(config.assets_dir, config.synthetic_samples)
        changes.update(data_path=str(json_path), image_folder=str(folder))
    elif config.data_path == SYNTHETIC_WORLD2:
        json_path, folder = materialise_world2(config.assets_dir, config.synthetic_samples, image_size(base))
        changes.update(data_path=str(json_path), image_folder=str(folder))
    return dataclasses.replace(config, **changes)


def after_export(config: JobConfig, accelerator, base_name: str, final: Path) -> None:
    """`evaluate`: the shapes benchmark of the base and the exported pruner (main process), its table printed."""
    if config.evaluate == "none":
        return
    if config.bench_world == 2:
        return after_export_world2(config, accelerator, base_name, final)
    if accelerator.is_main_process:
        from lvprune_shapes.bench import ShapesBenchConfig, run

        out = Path(config.output_dir) / "bench"
        accelerator.print("benchmarking the base and the exported pruner against the other methods"
                          + (" (about 2 minutes on 2 CPU cores)" if config.evaluate == "full" else ""))
        run(ShapesBenchConfig(out=str(out), base=base_name, pruner=str(final), quick=config.evaluate == "quick",
                              cache_dir=config.assets_dir, **config.plphp_options()))
        accelerator.print((out / "results.md").read_text())
    accelerator.wait_for_everyone()


def after_export_world2(config: JobConfig, accelerator, base_name: str, final: Path) -> None:
    """`evaluate` with `bench_world` 2: every method per task on fresh world-2 conversations, the exported pruner's
    rows among them (main process), its table printed."""
    if accelerator.is_main_process:
        from lvprune_shapes.world2_bench import World2BenchConfig, run

        out = Path(config.output_dir) / "bench"
        quick = config.evaluate == "quick"
        accelerator.print("benchmarking the base and the exported pruner against the other methods on world-2 "
                          "conversations" + ("" if quick else " (about 5 minutes on 2 CPU cores)"))
        sizes = dict(conversations=6, kv_samples=2, timing_runs=1, timing_repeats=1, decode_tokens=2) if quick else {}
        run(World2BenchConfig(base=base_name, pruner=str(final), figures=str(out), cache_dir=config.assets_dir,
                              **sizes), plphp=config.plphp_press())  # prints its table
    accelerator.wait_for_everyone()


def parse_job_config(argv=None) -> JobConfig:
    """The job's settings: `JobConfig` defaults <- `--config` (else `configs/default.yaml`) <- `--key value`."""
    from lvprune.training import parse_config

    return parse_config(argv, JobConfig, DEFAULT_CONFIG, prog="train/train.py")


def main(argv=None) -> dict:
    return train_main(argv, cls=JobConfig, default_file=DEFAULT_CONFIG, prog="train/train.py", prepare=prepare,
                      after_export=after_export)
