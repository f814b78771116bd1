"""The reference base on disk: trained once into a cache folder, then loaded from there."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from .config import ReferenceConfig
from .training import REPORT_FILE, train_reference

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune" / "reference-base"


def is_reference_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / REPORT_FILE).is_file()


def reference_base(cache_dir: str | Path | None = None, config: ReferenceConfig | None = None,
                   progress: bool = True) -> Path:
    """The folder of the reference base: `cache_dir` (default `~/.cache/lvprune/reference-base`) if it
    already holds one, else trained there now (about 15 minutes on 2 CPU cores with the default config).

    Training writes to a temporary sibling folder first, so an interrupted run never leaves half a model.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    if is_reference_folder(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        train_reference(staging, config, data_dir=staging / "data", progress=progress)
        shutil.rmtree(staging / "data")
        if folder.exists():
            folder.rmdir()  # only an empty folder may be replaced
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_reference(folder: str | Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The saved reference model (eval mode, fp32) and its processor."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, LlavaProcessor.from_pretrained(folder)
