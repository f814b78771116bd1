"""The benchmark's figures (matplotlib, Agg backend): accuracy against FLOPs, and the patches each method kept."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

PRUNED_SHADE = 0.25  # pruned patches keep this fraction of their brightness


def plot_accuracy_vs_flops(rows: list[dict], path: str | Path) -> None:
    """One labelled point per method: prefill TFLOPs (x) against exact-match accuracy (y)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in rows:
        x, y = row["prefill_tflops"] * 1e3, row["accuracy"] * 100
        ax.scatter(x, y, s=36, zorder=3)
        ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("prefill GFLOPs (batch 1)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against prefill compute")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def highlight_patches(image: np.ndarray, kept: list[int], patch_size: int) -> np.ndarray:
    """image [H, W, 3] uint8 with the patches not in `kept` (row-major patch indices) darkened."""
    grid = image.shape[1] // patch_size
    mask = np.zeros(grid * (image.shape[0] // patch_size), dtype=bool)
    mask[kept] = True
    mask = np.kron(mask.reshape(-1, grid), np.ones((patch_size, patch_size), dtype=bool))
    shaded = image.astype(np.float32) * np.where(mask[..., None], 1.0, PRUNED_SHADE)
    return shaded.astype(np.uint8)


def plot_kept_patches(examples: list[dict], methods: list[str], patch_size: int, path: str | Path) -> None:
    """A grid: one row per example, one column per method, each the image with its kept patches bright.

    examples: dicts of `image` (uint8 [H, W, 3]), `title` (the question and answer) and `kept`
    ({method: [patch index, ...]}).
    """
    fig, axes = plt.subplots(len(examples), len(methods), figsize=(1.9 * len(methods), 2.1 * len(examples)),
                             squeeze=False)
    for r, example in enumerate(examples):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            kept = example["kept"][method]
            ax.imshow(highlight_patches(example["image"], kept, patch_size))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(method, fontsize=8)
            ax.set_xlabel(f"{len(kept)} kept", fontsize=7)
        axes[r][0].set_ylabel(example["title"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
