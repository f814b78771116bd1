"""What keeps a run's work safe on a cluster: one trainer per output folder, and a preemption (SIGTERM from
SLURM or Kubernetes, Ctrl-C, the launcher's death) turned into a checkpoint at the next step boundary.

    lock = OutputLock(output_dir)            # raises if another trainer holds output_dir
    stop = StopSignals(output_dir)           # SIGTERM / SIGINT set a flag instead of killing the process
    ...
    if stop.agreed(signals):                 # summed over processes: every process stops after the same step
        save_checkpoint(...); sys.exit(stop.exit_code)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

LOCK_FILE = ".lvprune-train.lock"
ORPHAN_LOG = "after-launcher-died.log"  # the trainer's output once its launcher is gone
PR_SET_PDEATHSIG = 1


class OutputInUse(RuntimeError):
    """Another trainer holds the output folder."""


class OutputLock:
    """An exclusive `flock` on `output_dir/.lvprune-train.lock`, held by the main process for the run's life."""

    def __init__(self, output_dir):
        path = Path(output_dir) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise OutputInUse(f"{output_dir} is in use by another trainer ({holder}); give this run its own "
                               "output_dir, or wait for that one to finish.") from None
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class StopSignals:
    """SIGTERM and SIGINT request a stop instead of ending the process; the launcher's death sends SIGTERM.

    output_dir: where the process's output goes once its launcher is dead (`ORPHAN_LOG`): a launcher that pipes
        the trainer's stderr through itself (accelerate >= 1.16) takes the pipe's reader with it, and the next
        write to stderr (this class's own message, a progress bar) would end the process before its checkpoint.
    """

    def __init__(self, output_dir=None):
        self.received: int | None = None
        self.output_dir = output_dir
        self.parent = os.getppid()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)
        _terminate_with_parent()

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.received = signum
        if os.getppid() != self.parent:
            _write_output_to(Path(self.output_dir or ".") / ORPHAN_LOG)
        message = f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping"
        try:
            print(message, file=sys.stderr, flush=True)
        except OSError:  # stderr is a pipe nobody reads any more: keep going, quietly
            _write_output_to(os.devnull)

    @property
    def pending(self) -> int:
        """The signal this process received (0: none), for the step's collective (`health.finite_step`)."""
        return int(self.received or 0)

    def agreed(self, signals: int) -> bool:
        """Whether any process was asked to stop, given the processes' `pending` summed: all then stop."""
        if signals and self.received is None:
            self.received = signal.SIGTERM
        return bool(signals)

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process ended by it: a scheduler sees the job did not finish."""
        return 128 + int(self.received or signal.SIGTERM)


def _write_output_to(path) -> None:
    """Point this process's stdout and stderr (the file descriptors, so every writer follows) at `path`."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass  # what was buffered for the dead reader is lost; what comes next is kept
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(target, fd)
    os.close(target)


def _terminate_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (`accelerate launch`, torchrun) dies, so no trainer is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
