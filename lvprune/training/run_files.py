"""What a run keeps in its output folder: the lock, the resolved config, the metrics rows, whether it finished,
and the checkpoint it resumes from."""

from __future__ import annotations

import json
from pathlib import Path

from lvprune.training import checkpoints as checkpointing
from lvprune.training import saving
from lvprune.training.health import check_finite_weights
from lvprune.training.run_control import OutputLock
from lvprune.utils.atomic_files import replace_text
from lvprune.utils.command_line import to_yaml

SUMMARY_FILE = "train_summary.json"


def finished_run(output_dir: Path) -> dict | None:
    """The summary of a run that already finished in `output_dir` (its export written), else None."""
    path = output_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("finished") and (output_dir / "final" / "config.json").is_file() else None


def prepare_output_dir(accelerator, config) -> tuple[Path, OutputLock | None]:
    """Lock the output folder for this run, record the resolved config, and remove lvprune's own staging
    folders left by killed saves (nothing else in the folder is ever deleted)."""
    output_dir = Path(config.output_dir)
    lock = None
    if accelerator.is_main_process:
        lock = OutputLock(output_dir)
        (output_dir / "train_config.yaml").write_text(to_yaml(config))
        for path in checkpointing.clean_incomplete(output_dir):
            accelerator.print(f"removed the staging folder of an interrupted save: {path}")
    accelerator.wait_for_everyone()
    return output_dir, lock


def truncate_metrics(config, step: int) -> None:
    """Drop the rows of `metrics.jsonl` logged after `step` (a resumed run logs them again)."""
    path = Path(config.output_dir) / "metrics.jsonl"
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        replace_text(path, "".join(row + "\n" for row in rows))


def resume(accelerator, config, output_dir: Path, scheduler, trainable) -> int:
    """Restore `--resume_from_checkpoint` and return its step (0: a fresh start).

    With `latest`, a newest checkpoint that cannot be loaded (a damaged file, non-finite weights) is named and
    the one before it is tried, down to the oldest.
    """
    candidates = checkpointing.resume_candidates(output_dir, config.resume_from_checkpoint)
    for path in candidates:
        try:
            step = saving.load_checkpoint(accelerator, path, scheduler, config.gradient_accumulation_steps)
            check_finite_weights(trainable, f"the weights of {path}")
        except saving.UnsafeCheckpoint:
            raise
        except Exception as error:
            if len(candidates) == 1:
                raise
            accelerator.print(f"cannot resume from {path} ({type(error).__name__}: {error}); trying the one before")
            continue
        if accelerator.is_main_process:
            truncate_metrics(config, step)
        accelerator.print(f"resumed from {path} at step {step}")
        return step
    if candidates:
        raise saving.ResumeError(f"none of the checkpoints in {output_dir} could be loaded (see above); move them "
                                 "away to start afresh.")
    return 0
