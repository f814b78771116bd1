"""Publishing a trained pruner: its model card, and the upload of its folder to a Hugging Face Hub.

    write_model_card(folder, pruner.config, data="llava_v1_5_mix665k.json", metrics={"causal_loss": 1.23})
    push_folder(folder, "me/llava-1.5-7b-lvpruner", endpoint=None)   # huggingface.co, or a private Hub URL

The folder is what `LVPrunerModel.save_pretrained` wrote (`config.json`, `model.safetensors`); the card is its
`README.md`. Credentials come from huggingface_hub's usual places (`HF_TOKEN`, `hf auth login`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD_NAME = "README.md"


def public_name(name: str | None) -> str | None:
    """`name` as a card may show it: a Hub id as is, a local path by its last component (no local paths)."""
    if not name:
        return None
    path = Path(name).expanduser()
    local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    return path.name if local else name


def is_hub_id(name: str | None) -> bool:
    return bool(name) and public_name(name) == name


def card_metadata(config, data: str | None = None) -> dict:
    """The YAML front matter of a pruner's card (Hub search fields)."""
    meta = {"library_name": "lvprune", "tags": ["lvprune", "lvpruning", "vision-token-pruning", "llava"]}
    if is_hub_id(config.base_model_name_or_path):  # the Hub links `base_model` to that repository
        meta["base_model"] = config.base_model_name_or_path
    if is_hub_id(data):
        meta["datasets"] = [data]
    return meta


def _metrics_table(metrics: dict) -> str:
    if not metrics:
        return "No metrics were recorded.\n"
    rows = "\n".join(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
                     for name, value in metrics.items())
    return "| metric | value |\n| --- | --- |\n" + rows + "\n"


UNCHANGED_NOTE = "; the base model is unchanged and loaded from its own repository."
LORA_NOTE = (", and in `lora/` a LoRA adapter of the base's language model trained with them: merge it into the "
             "base before pruning, as below.")
LORA_USAGE = """from peft import PeftModel
from transformers import AutoModelForImageTextToText

base = AutoModelForImageTextToText.from_pretrained("{base}")
base = PeftModel.from_pretrained(base, "{where}", subfolder="lora").merge_and_unload()"""


def model_card(config, *, repo_id: str | None = None, data: str | None = None, metrics: dict | None = None,
               training: dict | None = None, lora: bool = False) -> str:
    """README.md text for a pruner with `config` (an `LVPrunerConfig`).

    Args:
        repo_id: where the card will live (used in the loading snippet; default: a local folder).
        data: the training data (file name or dataset id).
        metrics: final training metrics, e.g. `{"causal_loss": 1.2, "kept_fraction/stage_0": 0.5}`.
        training: the training settings worth showing (lr, batch, steps, ...).
        lora: the folder also holds a LoRA adapter of the language model in `lora/`.

    Local paths (of the base, of the data) are shown by their last component only.
    """
    base = public_name(config.base_model_name_or_path) or "<base model>"
    meta, data = card_metadata(config, data), public_name(data)
    where = repo_id or "path/to/this/folder"
    stages = "\n".join(f"| {s} | {layer} | {ratio:g} |"
                       for s, (layer, ratio) in enumerate(zip(config.after_layers, config.keep_ratios)))
    settings = "".join(f"- {key}: `{value}`\n" for key, value in (training or {}).items())
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# LVPruning decision modules for `{base}`

Language-guided vision-token pruning (LVPruning): {config.num_stages} small decision modules that read the
hidden states of `{base}` and remove vision tokens after the decoder layers below. This repository holds only
the decision modules ({config.num_blocks} cross-attention blocks with {config.num_heads} heads each, hidden
size {config.hidden_size}){LORA_NOTE if lora else UNCHANGED_NOTE}

| stage | after decoder layer (1-based) | training keep ratio |
| --- | --- | --- |
{stages}

Keep ratios are fractions of all of a sample's vision tokens still present after each stage; other ratios
can be chosen at load time without retraining.

## Usage

```python
import lvprune
{LORA_USAGE.format(where=where, base=base) if lora else ""}
model = lvprune.load_pruned_model({"base" if lora else f'"{base}"'}, pruner="{where}")
# optional: other inference ratios, e.g. keep_ratios=[0.6, 0.4, 0.2]
output = model.generate(**inputs, max_new_tokens=64)
print(model.pruning_stats)
```

## Training

- base model: `{base}` (frozen)
- data: {f"`{data}`" if data else "not recorded"}
- ratio loss: `{config.ratio_loss}`, λ_causal = {config.lambda_causal:g}, λ_ratio = {config.lambda_ratio:g}, Gumbel τ = {config.gumbel_tau:g}
{settings}
## Final training metrics

{_metrics_table(metrics or {})}"""


def write_model_card(folder, config, **card_kwargs) -> Path:
    """Write `model_card(config, **card_kwargs)` to `folder/README.md`; returns its path."""
    path = Path(folder) / CARD_NAME
    path.write_text(model_card(config, **card_kwargs))
    return path


def push_folder(folder, repo_id: str, *, endpoint: str | None = None, token: str | None = None,
                private: bool | None = None, commit_message: str = "Upload LVPruning decision modules") -> str:
    """Create `repo_id` (if needed) on the Hub at `endpoint` and upload every file of `folder`.

    Returns the URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message=commit_message)
    return commit.commit_url
