"""The training configuration: dataclass defaults <- YAML file <- command-line overrides.

    config = parse_config(["--config", "configs/llava-1.5-7b.yaml", "--max_steps", "10"])

Every key is a field of `TrainConfig`, documented there (`python train/train.py --help` lists them). Unknown
keys, in the YAML file or on the command line, are errors. Command-line values are read as YAML scalars
(`--lora_r 8`, `--bf16 true`, `--after_layers null`); lists take several words or one YAML list
(`--keep_ratios 0.6 0.4 0.2` or `--keep_ratios "[0.6, 0.4, 0.2]"`).

Without `--config`, `configs/default.yaml` is read: it is the one place that names the project's default run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
TINY_RANDOM = "tiny-random"
REFERENCE = "reference"
SYNTHETIC_SHAPES = "synthetic-shapes"
PRECISIONS = ("fp32", "bf16")
PADDING_SIDES = ("left", "right")
EVALUATIONS = ("none", "quick", "full")


def doc(default, help: str):
    """A dataclass field with a default and its documentation (shown by `--help`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of `train/train.py`. The defaults are a tiny random LLaVA on synthetic shapes (seconds on CPU)."""

    # ---------------------------------------------------------------- base model and pruner
    base_model: str = doc(TINY_RANDOM, "base model of a supported family: a folder or a Hub id (`from_pretrained`); "
                          "`tiny-random` materialises a tiny random LLaVA with its processor under `assets_dir` on first "
                          "use, `tiny-random-<model_type>` one of another family (e.g. tiny-random-qwen2_vl); `reference` "
                          "the project's reference base (trained from scratch on the shapes set on first use, "
                          "cached under `assets_dir`)")
    keep_ratios: list[float] = doc([0.5, 0.3, 0.1], "training keep ratio of each stage (paper: [0.5, 0.3, 0.1])")
    after_layers: list[int] | None = doc(None, "1-based decoder layers after which the stages run; null: the "
                                         "paper's (1, 8, 16) of 32 layers scaled to the base's depth")
    gumbel_tau: float = doc(1.0, "Gumbel-softmax temperature of the training decisions")
    ratio_loss: str = doc("mse", "ratio loss: mse (paper eq. 11) or huber")
    lambda_causal: float = doc(1.0, "weight of the language-modelling loss (eq. 12)")
    lambda_ratio: float = doc(2.0, "weight of the ratio loss (eq. 12)")
    lora_r: int = doc(0, "LoRA rank on the language model (0: off; the base stays fully frozen)")
    lora_alpha: int = doc(16, "LoRA alpha")
    lora_dropout: float = doc(0.0, "LoRA dropout")
    lora_target: str = doc(r".*language_model.*\.(q_proj|v_proj)", "regex of the modules LoRA adapts; it "
                           "must name the language model, since plain q_proj/v_proj also match the CLIP tower")
    # ---------------------------------------------------------------- data
    data_path: str = doc(SYNTHETIC_SHAPES, "LLaVA-format training records (.json list or .jsonl); "
                         "`synthetic-shapes` generates a small shapes VQA set under `assets_dir` on first use")
    image_folder: str | None = doc(None, "folder the records' image paths are relative to")
    synthetic_samples: int = doc(64, "records generated for `synthetic-shapes`")
    chat_template: str | None = doc(None, "null: the processor's own chat template (it must mark the answers with "
                                    "{% generation %}); `family`: lvprune's copy of the base family's template, "
                                    "which does; `llava-1.5`: LLaVA-1.5's (Vicuna v1) whatever the family")
    max_length: int | None = doc(None, "leave out records longer than this many tokens (null: keep all)")
    padding_side: str = doc("right", "side the collator pads batches on: left or right")
    num_workers: int = doc(0, "DataLoader worker processes per training process")
    # ---------------------------------------------------------------- optimisation
    per_device_batch_size: int = doc(2, "samples per micro-batch on each process")
    gradient_accumulation_steps: int = doc(1, "micro-batches per optimizer step; the global batch is "
                                           "per_device_batch_size x processes x gradient_accumulation_steps")
    learning_rate: float = doc(1e-3, "peak learning rate of AdamW (paper: 2e-6)")
    warmup_ratio: float = doc(0.03, "fraction of the steps with a linear warm-up, then cosine decay to 0")
    weight_decay: float = doc(0.0, "AdamW weight decay (paper: none)")
    max_grad_norm: float = doc(1.0, "gradient clipping norm (0: no clipping)")
    max_nonfinite_steps: int = doc(0, "optimizer steps whose loss or gradient norm is NaN or infinite that are "
                                   "skipped (no update) before the run stops with an error (0: stop at the first)")
    num_train_epochs: float = doc(1.0, "passes over the data (used when max_steps is 0)")
    max_steps: int = doc(2, "optimizer steps to train (0: from num_train_epochs)")
    precision: str = doc("fp32", "fp32, or bf16 (base weights in bf16 and bf16 autocast; the pruner's "
                         "master weights stay fp32)")
    seed: int = doc(0, "seed of the pruner's initialisation, the data order and the Gumbel noise")
    cpu_threads: int = doc(1, "torch threads per process when training on the CPU (0: the process's share of the "
                           "cores); tiny models run fastest on one, and several processes should not "
                           "oversubscribe the cores")
    # ---------------------------------------------------------------- checkpoints, logs, export
    output_dir: str = doc("outputs/tiny-cpu", "checkpoints, logs and the final export go here")
    assets_dir: str = doc("outputs/assets", "where `tiny-random` and `synthetic-shapes` are materialised")
    save_steps: int = doc(0, "save a checkpoint every this many optimizer steps (0: none before the end)")
    save_total_limit: int = doc(0, "keep only the newest this many checkpoints (0: keep all)")
    resume_from_checkpoint: str | None = doc(None, "`latest` (the newest complete checkpoint of output_dir, if "
                                             "any) or a checkpoint folder")
    stop_after_steps: int = doc(0, "save a checkpoint and stop after this many steps, keeping the schedule of "
                                "the full run (for time-limited jobs; 0: run to the end)")
    logging_steps: int = doc(1, "log metrics every this many optimizer steps")
    record_samples: bool = doc(False, "append the sample indices of every micro-batch, per process, to "
                               "output_dir/samples.jsonl")
    push_to_hub: str | None = doc(None, "Hub repository id to upload the final pruner to")
    hub_endpoint: str | None = doc(None, "Hub URL (null: huggingface.co or $HF_ENDPOINT)")
    hub_private: bool | None = doc(None, "create the Hub repository as private (true) or public (false); null: "
                                   "the Hub's default for the namespace (an organisation may default to private)")
    evaluate: str = doc("none", "after the export, benchmark the base and the new pruner against the other "
                        "methods (`lvprune bench`): none, quick (a smoke test) or full; writes output_dir/bench")
    bench_plphp: list[float] | None = doc(None, "PLPHP's [r, delta_r, alpha, beta, start_layer] for the benchmark's "
                                          "PLPHP rows (null: PLPHPConfig's defaults)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise `ValueError` naming the first invalid value."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"{item.name}={value} must be a finite number.")
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("padding_side", self.padding_side, PADDING_SIDES)
        _one_of("ratio_loss", self.ratio_loss, ("mse", "huber"))
        _one_of("evaluate", self.evaluate, EVALUATIONS)
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("lora_r", "max_steps", "save_steps", "save_total_limit", "stop_after_steps", "num_workers",
                     "max_grad_norm", "weight_decay", "synthetic_samples", "cpu_threads", "seed", "lambda_causal",
                     "lambda_ratio", "max_nonfinite_steps", "gumbel_tau", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.seed >= 2**32:
            raise ValueError(f"seed={self.seed} must be below 2**32 (the Gumbel noise seeds are seed * 2**32 + k).")
        if self.gumbel_tau == 0:
            raise ValueError("gumbel_tau must be positive.")
        if not all(0 < r <= 1 for r in self.keep_ratios):
            raise ValueError(f"keep_ratios={self.keep_ratios} must each be in (0, 1].")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1).")
        if self.max_steps == 0 and self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs={self.num_train_epochs} must be positive when max_steps is 0.")
        if self.bench_plphp is not None and len(self.bench_plphp) != 5:
            raise ValueError(f"bench_plphp={self.bench_plphp} must be [r, delta_r, alpha, beta, start_layer].")
        if self.chat_template not in (None, "family", "llava-1.5"):
            raise ValueError(f"chat_template={self.chat_template!r} must be null, 'family' or 'llava-1.5'.")
        if self.base_model.startswith(TINY_RANDOM + "-"):
            tiny_family(self.base_model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tiny_family(base_model: str) -> str | None:
    """The model_type of a `tiny-random[-<model_type>]` base (None for any other base); refuses an unknown one."""
    if base_model == TINY_RANDOM:
        return "llava"
    if not base_model.startswith(TINY_RANDOM + "-"):
        return None
    from lvprune.backbones import supported

    family = base_model[len(TINY_RANDOM) + 1:]
    if family not in supported():
        raise ValueError(f"base_model={base_model!r}: no supported family {family!r}; tiny bases: "
                         f"{', '.join(f'{TINY_RANDOM}-{t}' for t in sorted(supported()))}.")
    return family


def _one_of(name, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {options}.")


# -------------------------------------------------------------------- layering


def parse_config(argv=None) -> TrainConfig:
    """defaults <- `--config` YAML (default `configs/default.yaml`) <- `--key value` overrides."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise ValueError(f"command line: {_unknown_message([w.lstrip('-') for w in unknown if w.startswith('--')] or unknown)}")
    values = {}
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config or path.is_file():
        values.update(read_yaml(path))
    values.update({key: _cli_value(words) for key, words in vars(args).items() if key != "config" and words})
    return from_dict(values, source=str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=TrainConfig.__doc__, allow_abbrev=False,
                                     usage="%(prog)s [--config FILE] [--KEY VALUE ...]")
    parser.add_argument("--config", help=f"YAML file of settings (default: {DEFAULT_CONFIG.name} if present)")
    for item in dataclasses.fields(TrainConfig):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        text = f"{item.metadata['help']} (default: {default})".replace("%", "%%")  # argparse formats help with %
        parser.add_argument(f"--{item.name}", nargs="+", metavar="VALUE", help=text)
    return parser


def read_yaml(path: Path) -> dict:
    """The mapping of a YAML config file (an empty file is an empty mapping)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    return values


def _cli_value(words: list[str]):
    # One word is a YAML scalar or list; several words are a list. Strings are kept raw for str fields.
    return _Raw(words[0]) if len(words) == 1 else [yaml.safe_load(word) for word in words]


class _Raw(str):
    """A command-line word not yet read as YAML (a str field takes it as is)."""


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """Build a `TrainConfig` from a mapping, converting each value to its field's type."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{source}: {_unknown_message(unknown)}")
    return TrainConfig(**{key: coerce(key, value, hints[key]) for key, value in values.items()})


def _unknown_message(keys) -> str:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    hints = {key: difflib.get_close_matches(key, names, n=1) for key in keys}
    named = ", ".join(f"{key!r}" + (f" (did you mean {hints[key][0]!r}?)" if hints[key] else "") for key in keys)
    return f"unknown key(s) {named}; every key is a field of TrainConfig (see --help)."


def coerce(name: str, value, hint):
    """`value` as the type `hint` of field `name`; `ValueError` naming the field otherwise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _Raw) and value.lower() in ("null", "none", "~")):
            return None
        return coerce(name, value, next(a for a in args if a is not type(None)))
    if hint is str:
        return str(value)
    if isinstance(value, _Raw):
        value = yaml.safe_load(value)
    if typing.get_origin(hint) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(name, item, args[0]) for item in items]
    if hint is bool and isinstance(value, bool):
        return value
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads `1e-3` as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name}={value!r} is not a valid {getattr(hint, '__name__', hint)}.")


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def to_yaml(config: TrainConfig) -> str:
    """The resolved configuration as YAML (written next to the run's outputs)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
