"""Divergence guards: a NaN or infinite loss or gradient norm stops the run, and non-finite weights are never
saved, exported or pushed."""

from __future__ import annotations

import math

import torch


class DivergenceError(RuntimeError):
    """Training produced non-finite values; nothing non-finite was written."""


def finite_step(accelerator, loss: torch.Tensor, grad_norm, signal: int = 0) -> tuple[bool, float, float, int]:
    """Whether an optimizer step's loss (summed over all processes) and gradient norm are finite.

    Every process gets the same answer (the loss is reduced, the norm is of the synced gradients), so all of
    them skip or stop together. The same collective sums each process's pending stop `signal` (0: none), so a
    preemption seen by one process stops them all after the same step. Returns (finite, loss, grad norm,
    signal) as floats and an int (NaN for a missing norm; the signal > 0 if any process got one).
    """
    values = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(signal), device=loss.device)])
    total, signals = accelerator.reduce(values, reduction="sum").tolist()
    norm = float(grad_norm) if grad_norm is not None else math.nan
    finite = math.isfinite(total) and (grad_norm is None or math.isfinite(norm))
    return finite, total, norm, int(signals)


def check_finite_weights(params, what: str) -> None:
    """Raise DivergenceError if any of `params` holds a NaN or an infinity; `what` names the weights."""
    bad = sum(int((~torch.isfinite(p.detach())).sum()) for p in params)
    if bad:
        raise DivergenceError(f"{what} hold {bad} non-finite values (NaN or inf); refusing to use or write them.")
