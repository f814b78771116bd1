"""Writing so that a reader never sees half a result: one way for folders, one for text files.

(Checkpoints add a completion marker and an fsync to this: `lvprune.training.checkpoints`.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_folder(target: str | Path, write) -> Path:
    """`write(staging)` into a new folder beside `target`, then rename it to `target` in one step, so readers see
    no folder or a whole one and a killed writer leaves only its staging folder (`.<name>.*`). An empty `target`
    is replaced; one that another process completed meanwhile is kept (it is as good as ours)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
