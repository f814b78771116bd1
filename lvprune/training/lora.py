"""Optional LoRA on the base's language model, trained together with the pruner.

The adapter is injected in place (`peft.inject_adapter_in_model`), so the base stays a stock
`LlavaForConditionalGeneration` that lvprune's hooks recognise. It is saved in peft's own layout, so

    base = PeftModel.from_pretrained(base, "final/lora").merge_and_unload()

loads it back before `lvprune.load_pruned_model(base, pruner="final")`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the base's own parameter names


def lora_config(config, base_name: str | None = None) -> LoraConfig:
    """The `LoraConfig` of a `TrainConfig` (rank `lora_r` on the modules matched by `lora_target`)."""
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target, base_model_name_or_path=base_name or config.base_model)


def add_lora(base: torch.nn.Module, lora: LoraConfig) -> list[str]:
    """Inject `lora` into `base` and make only its new weights trainable; returns the adapted module names.

    Raises `ValueError` if the pattern reaches outside the language model (the CLIP tower and the projector
    stay frozen in LVPruning).
    """
    inject_adapter_in_model(lora, base)
    adapted = sorted({name.rsplit(".lora_", 1)[0] for name, _ in base.named_parameters() if ".lora_" in name})
    outside = [name for name in adapted if ".language_model." not in f".{name}"]
    if outside:
        raise ValueError(f"lora_target={lora.target_modules!r} also adapts {outside[:3]}: restrict it to the "
                         "language model, e.g. '.*language_model.*\\.(q_proj|v_proj)'.")
    for name, param in base.named_parameters():
        param.requires_grad_(".lora_" in name)
    return adapted


def lora_parameters(base: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's parameters in `base`."""
    return [param for name, param in base.named_parameters() if ".lora_" in name]


def save_lora(base: torch.nn.Module, lora: LoraConfig, folder, state_dict: dict | None = None) -> None:
    """Write the adapter of `base` to `folder` in `PeftModel.from_pretrained`'s layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The embeddings are frozen: no need for peft to look the base up on the Hub to decide whether to save them.
    weights = get_peft_model_state_dict(base, state_dict=state_dict, save_embedding_layers=False)
    save_file({PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in weights.items()}, folder / ADAPTER_WEIGHTS)
    lora.save_pretrained(folder)


def load_lora(base: torch.nn.Module, folder) -> None:
    """Load adapter weights written by `save_lora` into `base`, which already holds the same adapter."""
    weights = load_file(Path(folder) / ADAPTER_WEIGHTS)
    weights = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
    result = set_peft_model_state_dict(base, weights)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: adapter weights that fit no module: {result.unexpected_keys[:3]}")
