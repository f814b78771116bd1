"""Atomic training checkpoints: `output_dir/checkpoint-<step>/`, complete or absent.

A checkpoint is written into a hidden temporary folder `output_dir/.tmp-checkpoint-<step>/`; a completion
marker (`checkpoint_complete.json`, holding the step) is written last, and only then is the folder renamed to
its final name. A run killed while saving therefore leaves at worst a temporary folder; `resume_candidates`
ignores it and `clean_incomplete` removes it. A `checkpoint-*` folder without a marker (another tool's: HF Trainer uses the
same names) is ignored and never deleted.

    staging = begin_checkpoint(output_dir, step)      # empty folder to write into
    ...                                                # accelerator.save_state(staging), save_pretrained, ...
    final = commit_checkpoint(output_dir, step)        # marker, then rename -> output_dir/checkpoint-<step>
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

MARKER = "checkpoint_complete.json"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + PREFIX
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_dir(output_dir, step: int) -> Path:
    """Final folder of the checkpoint taken after optimizer step `step`."""
    return Path(output_dir) / f"{PREFIX}{step}"


def staging_dir(output_dir, step: int) -> Path:
    """Temporary folder a checkpoint is written into before it is committed."""
    return Path(output_dir) / f"{TMP_PREFIX}{step}"


def is_complete(path) -> bool:
    """Whether `path` is a committed checkpoint (its completion marker exists)."""
    return (Path(path) / MARKER).is_file()


def checkpoint_step(path) -> int:
    """The optimizer step a complete checkpoint was taken at (read from its marker)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint: it has no {MARKER}.")
    return int(json.loads(marker.read_text())["step"])


def begin_checkpoint(output_dir, step: int) -> Path:
    """Create an empty staging folder for step `step` (a leftover one from a killed save is removed)."""
    staging = staging_dir(output_dir, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_checkpoint(output_dir, step: int, **info) -> Path:
    """Write the marker into the staging folder, then rename it to `checkpoint-<step>`; returns the final path.

    `info` (JSON-serialisable) is stored in the marker next to the step. An older checkpoint of the same step
    is replaced. The rename is atomic on POSIX file systems, so readers see either no folder or a full one.
    """
    staging, final = staging_dir(output_dir, step), checkpoint_dir(output_dir, step)
    if final.exists() and not is_complete(final):
        raise FileExistsError(f"{final} exists and is not an lvprune checkpoint (no {MARKER}); lvprune never "
                              "deletes another tool's folder: move it out of output_dir.")
    marker = staging / MARKER
    marker.write_text(json.dumps({"step": step, "time": time.time(), **info}, indent=1) + "\n")
    _fsync(marker)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def _fsync(path: Path) -> None:
    # The marker must be on disk before the rename makes the folder visible as complete.
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as `(step, path)`, oldest first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX}*") if Path(output_dir).is_dir() else []:
        match = _NAME.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def clean_incomplete(output_dir) -> list[Path]:
    """Remove lvprune's own staging folders (`.tmp-checkpoint-<n>`) left by killed saves; returns them."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        if re.fullmatch(rf"{re.escape(TMP_PREFIX)}\d+", path.name) and path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def rotate_checkpoints(output_dir, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (None or 0: keep all); returns the deleted ones."""
    if not keep:
        return []
    old = [path for _, path in list_checkpoints(output_dir)[:-keep]]
    for path in old:
        shutil.rmtree(path)
    return old


def resume_candidates(output_dir, resume: str | None) -> list[Path]:
    """The checkpoints `--resume_from_checkpoint` names, in the order to try them: None/"" -> none; "latest" ->
    every complete checkpoint of `output_dir`, newest first (none yet: a preempted job can be relaunched with
    the same command; a damaged newest one falls back to the one before); a path -> that checkpoint, which
    must be complete."""
    if not resume:
        return []
    if resume == "latest":
        return [path for _, path in reversed(list_checkpoints(output_dir))]
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={resume!r}: no such folder.")
    if not is_complete(path):
        raise ValueError(f"resume_from_checkpoint={resume!r} is incomplete (no {MARKER}); a save was interrupted.")
    return [path]
