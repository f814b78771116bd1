"""The settings of a training run: `TrainConfig`, layered as dataclass defaults <- YAML file <- `--key value`
(`lvprune.utils.command_line`).

    config = parse_config(["--config", "configs/llava-1.5-7b.yaml", "--max_steps", "10"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lvprune.utils.command_line import check_choices, check_finite, doc, parse


@dataclass
class TrainConfig:
    """Every setting of a training run (`lvprune.training.train`, `accelerate launch -m lvprune.training`)."""

    # ---------------------------------------------------------------- base model and pruner
    base_model: str | None = doc(None, "base model of a supported family: a folder or a Hub id (`from_pretrained`)")
    keep_ratios: list[float] = doc([0.5, 0.3, 0.1], "training keep ratio of each stage (paper: [0.5, 0.3, 0.1])")
    after_layers: list[int] | None = doc(None, "1-based decoder layers after which the stages run; null: the "
                                         "paper's (1, 8, 16) of 32 layers scaled to the base's depth")
    gumbel_tau: float = doc(1.0, "Gumbel-softmax temperature of the training decisions")
    ratio_loss: Literal["mse", "huber"] = doc("mse", "ratio loss: mse (paper eq. 11) or huber")
    lambda_causal: float = doc(1.0, "weight of the language-modelling loss (eq. 12)")
    lambda_ratio: float = doc(2.0, "weight of the ratio loss (eq. 12)")
    lora_r: int = doc(0, "LoRA rank on the language model (0: off; the base stays fully frozen)")
    lora_alpha: int = doc(16, "LoRA alpha")
    lora_dropout: float = doc(0.0, "LoRA dropout")
    lora_target: str = doc(r".*language_model.*\.(q_proj|v_proj)", "regex of the modules LoRA adapts; it "
                           "must name the language model, since plain q_proj/v_proj also match the CLIP tower")
    # ---------------------------------------------------------------- data
    data_path: str | None = doc(None, "LLaVA-format training records (.json list or .jsonl)")
    image_folder: str | None = doc(None, "folder the records' image paths are relative to")
    chat_template: Literal["family", "llava-1.5"] | None = doc(None, "null: the processor's own chat template (it must mark the answers with "
                                    "{% generation %}); `family`: lvprune's copy of the base family's template, "
                                    "which does; `llava-1.5`: LLaVA-1.5's (Vicuna v1) whatever the family")
    max_length: int | None = doc(None, "leave out records longer than this many tokens (null: keep all)")
    padding_side: Literal["right", "left"] = doc("right", "side the collator pads batches on: left or right")
    num_workers: int | None = doc(None, "DataLoader worker processes per training process, which encode the "
                                  "examples (images, template) while the model trains (null: up to 4 on a GPU, "
                                  "within the process's share of the cores; 0 on the CPU, where training uses the "
                                  "cores itself)")
    data_num_proc: int = doc(0, "processes that check the records before the first run on a data file (0: the "
                             "cores the main process may use); later runs reuse the check")
    data_cache_dir: str | None = doc(None, "where the records' check is kept, keyed by the data file, image folder, "
                                     "processor and options (null: beside datasets' cache, HF_DATASETS_CACHE)")
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
    precision: Literal["fp32", "bf16"] = doc("fp32", "fp32, or bf16 (base weights in bf16 and bf16 autocast; the pruner's "
                         "master weights stay fp32)")
    seed: int = doc(0, "seed of the pruner's initialisation, the data order and the Gumbel noise")
    cpu_threads: int = doc(1, "torch threads per process when training on the CPU (0: the process's share of the "
                           "cores); tiny models run fastest on one, and several processes should not "
                           "oversubscribe the cores")
    # ---------------------------------------------------------------- checkpoints, logs, export
    output_dir: str = doc("outputs/lvprune-pruner", "checkpoints, logs and the final export go here")
    save_steps: int = doc(0, "save a checkpoint every this many optimizer steps (0: none before the end)")
    save_total_limit: int = doc(0, "keep only the newest this many checkpoints (0: keep all)")
    resume_from_checkpoint: str | None = doc(None, "`latest` (the newest complete checkpoint of output_dir, if "
                                             "any) or a checkpoint folder")
    stop_after_steps: int = doc(0, "save a checkpoint and stop after this many steps, keeping the schedule of "
                                "the full run (for time-limited jobs; 0: run to the end)")
    logging_steps: int = doc(1, "log metrics every this many optimizer steps")
    report_to: Literal["tensorboard", "none"] = doc("tensorboard", "where metrics go besides metrics.jsonl: tensorboard (output_dir/logs) or "
                         "none")
    record_samples: bool = doc(False, "append the sample indices of every micro-batch, per process, to "
                               "output_dir/samples.jsonl")
    push_to_hub: str | None = doc(None, "Hub repository id to upload the final pruner to")
    hub_endpoint: str | None = doc(None, "Hub URL (null: huggingface.co or $HF_ENDPOINT)")
    hub_private: bool | None = doc(None, "create the Hub repository as private (true) or public (false); null: "
                                   "the Hub's default for the namespace (an organisation may default to private)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise `ValueError` naming the first invalid value."""
        check_finite(self)
        for name in ("base_model", "data_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required: pass --{name} (or set it in the --config file).")
        check_choices(self)
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("lora_r", "max_steps", "save_steps", "save_total_limit", "stop_after_steps", "data_num_proc",
                     "max_grad_norm", "weight_decay", "cpu_threads", "seed", "lambda_causal",
                     "lambda_ratio", "max_nonfinite_steps", "gumbel_tau", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0 (null: chosen for the device).")
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_config(argv=None, cls=TrainConfig, default_file: Path | None = None, prog: str | None = None):
    """A `TrainConfig` (or a subclass's instance) from the command line; see `lvprune.utils.command_line.parse`."""
    return parse(cls, argv, default_file=default_file, prog=prog)
