"""The benchmark's result files: `results.json` (exactly the published fields) and `results.md`."""

from __future__ import annotations

import json
from pathlib import Path

RESULT_FIELDS = ("method", "accuracy", "yes_no_f1", "prefill_tflops", "kv_cache_bytes", "prefill_ms",
                 "decode_ms_per_token")


def result_rows(rows: list[dict]) -> list[dict]:
    """Rows reduced to `RESULT_FIELDS`, in that order, as plain JSON numbers."""
    return [{k: (row[k] if k == "method" else float(row[k])) for k in RESULT_FIELDS} for row in rows]


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table, with FLOPs, KV bytes and times also relative to `unpruned`."""
    base = next((r for r in rows if r["method"] == "unpruned"), rows[0])
    lines = ["| method | accuracy | yes/no F1 | prefill GFLOPs | KV cache (KiB) | prefill ms | decode ms/token |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['accuracy']:.1f} | {100 * r['yes_no_f1']:.1f} "
            f"| {1e3 * r['prefill_tflops']:.3f} ({r['prefill_tflops'] / base['prefill_tflops']:.0%}) "
            f"| {r['kv_cache_bytes'] / 1024:.1f} ({r['kv_cache_bytes'] / base['kv_cache_bytes']:.0%}) "
            f"| {r['prefill_ms']:.1f} ({r['prefill_ms'] / base['prefill_ms']:.0%}) "
            f"| {r['decode_ms_per_token']:.2f} |")
    return "\n".join(lines)


def type_table(rows: list[dict]) -> str:
    """Accuracy of each method per question type (Markdown)."""
    types = sorted({t for r in rows for t in r.get("accuracy_by_type", {})})
    lines = ["| method | " + " | ".join(types) + " |", "| --- |" + " ---: |" * len(types)]
    for r in rows:
        cells = " | ".join(f"{100 * r['accuracy_by_type'].get(t, float('nan')):.1f}" for t in types)
        lines.append(f"| {r['method']} | {cells} |")
    return "\n".join(lines)


def write_results(rows: list[dict], out: str | Path, context: dict | None = None) -> None:
    """Write `results.json` (a list of rows with exactly `RESULT_FIELDS`) and `results.md` to `out`."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(result_rows(rows), indent=1) + "\n")
    parts = ["# lvprune benchmark", ""]
    if context:
        parts += [", ".join(f"{k}: {v}" for k, v in context.items()), ""]
    parts += [markdown_table(rows), ""]
    if any("accuracy_by_type" in r for r in rows):
        parts += ["Accuracy (%) per question type:", "", type_table(rows), ""]
    (out / "results.md").write_text("\n".join(parts))
