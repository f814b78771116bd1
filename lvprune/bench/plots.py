"""The benchmark's figures (matplotlib, Agg backend): accuracy against FLOPs, and the patches each method kept."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

PRUNED_SHADE = 0.25  # pruned patches keep this fraction of their brightness


def method_of(row_name: str) -> str:
    """The method a benchmark row belongs to: its name without a trailing budget (`lvpruning-0.5` -> `lvpruning`,
    `divprune-0.475` -> `divprune`; `lvpruning-0.5+plphp` is a method of its own)."""
    return re.sub(r"-[0-9.]+$", "", row_name)


def plot_accuracy_vs_flops(rows: list[dict], path: str | Path) -> None:
    """Two panels, a line per method through its budgets: exact-match accuracy (y) against prefill FLOPs and
    against the KV cache held after the prefill, each as a fraction of the unpruned row's (x); a legend names the
    methods, since methods that share a cost (PLPHP's prefill is the unpruned one) would hide each other's labels."""
    base = next((r for r in rows if r["method"] == "unpruned"), rows[0])
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(method_of(row["method"]), []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4), sharey=True)
    panels = (("prefill_tflops", "prefill FLOPs (% of unpruned)"), ("kv_cache_bytes", "KV cache (% of unpruned)"))
    markers = "osD^vP*Xh<>p"
    for ax, (key, label) in zip(axes, panels):
        for i, (name, group) in enumerate(methods.items()):
            points = sorted((100 * r[key] / base[key], 100 * r["accuracy"]) for r in group)
            ax.plot(*zip(*points), marker=markers[i % len(markers)], markersize=6, linewidth=1.2, label=name)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Accuracy against prefill compute and KV cache (per prompt; a line joins a method's budgets)")
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
