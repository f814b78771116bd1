"""Training metrics (torchmetrics, synced across processes) and the run's time and memory figures."""

from __future__ import annotations

import resource
import time

import torch
from torchmetrics import MeanMetric


class TrainMetrics:
    """Running means over the micro-batches since the last `compute()`: loss, causal_loss, ratio_loss and the
    kept fraction of vision tokens after each stage (`kept_fraction/stage_<s>`).

    `compute()` all-gathers across processes (torchmetrics does it when torch.distributed is initialised), so
    every process must call it at the same step; it then starts a new window.
    """

    def __init__(self, num_stages: int, device):
        names = ["loss", "causal_loss", "ratio_loss"] + [f"kept_fraction/stage_{s}" for s in range(num_stages)]
        # NaN arrives for a batch without images (no kept fraction): skip it rather than poison the mean.
        self.metrics = {name: MeanMetric(nan_strategy="ignore").to(device) for name in names}

    def update(self, output) -> None:
        """Add one micro-batch's `LVPruningOutput`."""
        values = [output.loss, output.causal_loss, output.ratio_loss, *output.keep_fractions]
        for metric, value in zip(self.metrics.values(), values):
            metric.update(value.detach().float())

    def compute(self) -> dict[str, float]:
        """The window's means (identical on every process), then reset."""
        values = {name: metric.compute().item() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        return values


class Resources:
    """Wall time per optimizer step (the first, which includes warm-up work, reported apart) and peak memory."""

    def __init__(self):
        self.times: list[float] = []
        self._start = None

    def start_step(self) -> None:
        self._start = time.perf_counter()

    def end_step(self) -> float:
        self.times.append(time.perf_counter() - self._start)
        return self.times[-1]

    def summary(self) -> dict[str, float]:
        """`first_step_s`, `step_s` (mean of the later steps), `peak_rss_mib` and, on CUDA, `peak_cuda_mib`."""
        later = self.times[1:] or self.times
        out = {
            "first_step_s": self.times[0] if self.times else float("nan"),
            "step_s": sum(later) / len(later) if later else float("nan"),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        }
        if torch.cuda.is_available():
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return out
