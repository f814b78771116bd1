"""The reference base on disk: trained once into a cache folder, then loaded from there."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lvprune.utils.atomic_files import write_folder
from lvprune_shapes.reference.config import ReferenceConfig
from lvprune_shapes.reference.train_reference import REPORT_FILE, train_reference

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lvprune" / "reference-base"
# The default build, shipped with the repository (3 MB): the main job need not spend 15 minutes rebuilding it.
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "reference-base"
CHECKSUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_checksums(folder: str | Path) -> Path:
    """Write `folder/SHA256SUMS` (`sha256sum` format) over every file of the folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    (folder / CHECKSUMS).write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))
    return folder / CHECKSUMS


def verify_checksums(folder: str | Path) -> list[str]:
    """Files of `folder` whose SHA-256 differs from `SHA256SUMS`, or are missing (empty: all intact)."""
    folder = Path(folder)
    listed = [line.split(maxsplit=1) for line in (folder / CHECKSUMS).read_text().splitlines() if line.strip()]
    return [name for digest, name in listed if not (folder / name).is_file() or sha256(folder / name) != digest]


def shipped_reference() -> Path | None:
    """The shipped default build if it is present and intact (checked against its SHA256SUMS), else None."""
    if not (SHIPPED_DIR / CHECKSUMS).is_file():
        return None
    damaged = verify_checksums(SHIPPED_DIR)
    if damaged:
        print(f"the shipped reference base {SHIPPED_DIR} does not match its {CHECKSUMS} ({', '.join(damaged)}); "
              "it will be rebuilt")
        return None
    return SHIPPED_DIR


def is_reference_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / REPORT_FILE).is_file()


def reference_base(cache_dir: str | Path | None = None, config: ReferenceConfig | None = None,
                   progress: bool = True) -> Path:
    """The folder of the reference base: `cache_dir` (default `~/.cache/lvprune/reference-base`) if it
    already holds one; else, for the default recipe, the build shipped with the repository; else trained
    into `cache_dir` now (about 15 minutes on 2 CPU cores with the default config).

    Training writes to a temporary sibling folder first, so an interrupted run never leaves half a model.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    if is_reference_folder(folder):
        return folder
    if config is None or config == ReferenceConfig():
        shipped = shipped_reference()
        if shipped is not None:
            return shipped
        print(f"building the reference base into {folder}: about 15 minutes on 2 CPU cores, once")

    def write(staging: Path) -> None:
        train_reference(staging, config, data_dir=staging / "data", progress=progress)
        shutil.rmtree(staging / "data")
        write_checksums(staging)  # a rebuilt default can replace the shipped one as it is

    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not a reference base: only an empty folder is replaced.")
    return write_folder(folder, write)


def load_reference(folder: str | Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The saved reference model (eval mode, fp32) and its processor."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, LlavaProcessor.from_pretrained(folder)
