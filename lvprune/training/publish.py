"""The end of a run: `output_dir/final/` (pruner, card, adapter), and its upload to the Hub."""

from __future__ import annotations

import os
from pathlib import Path

from lvprune.hub import push_folder, write_model_card
from lvprune.training import saving


def export(accelerator, config, model, lora, data_name: str, summary: dict) -> Path:
    """Write `output_dir/final/` (pruner, card, adapter) and push it if asked; returns the folder."""
    final = Path(config.output_dir) / "final"
    saving.save_trainable(accelerator, model, final, lora)
    if accelerator.is_main_process:
        readable_by_umask(final)
        training = {"steps": summary["step"], "global batch": summary["global_batch"],
                    "peak learning rate": config.learning_rate, "warm-up ratio": config.warmup_ratio,
                    "max grad norm": config.max_grad_norm, "precision": config.precision, "LoRA rank": config.lora_r}
        metrics = {k: v for k, v in summary.items() if k.endswith("loss") or k.startswith("kept_fraction")}
        write_model_card(final, model.pruner.config, repo_id=config.push_to_hub, data=data_name,
                         metrics=metrics, training=training, lora=lora is not None)
        if config.push_to_hub:
            url = push_folder(final, config.push_to_hub, endpoint=config.hub_endpoint, private=config.hub_private)
            accelerator.print(f"pushed {final} -> {url}")
    accelerator.wait_for_everyone()
    return final


def readable_by_umask(folder: Path) -> None:
    """Give the export's files the permissions the user's umask allows (writers stage them as 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def check_push_settings(config) -> None:
    """Refuse a `push_to_hub` that would fail after training: a malformed repository id, or no token."""
    if not config.push_to_hub:
        return
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(config.push_to_hub)
    except HFValidationError as error:
        raise ValueError(f"push_to_hub={config.push_to_hub!r}: {error}") from None
    if get_token() is None:
        raise ValueError("push_to_hub needs a Hub token: run `hf auth login` or set HF_TOKEN before training.")
