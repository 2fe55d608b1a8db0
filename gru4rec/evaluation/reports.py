"""Tables and plots of evaluation results, shared by `evaluate`, `compare` and `tune`.

Plots use matplotlib's Agg backend (no display needed) and are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from gru4rec.foundation.atomic import atomic_file

METRIC_TITLES = {
    "recall": "Recall",
    "mrr": "MRR",
    "ndcg": "NDCG",
    "coverage": "Coverage",
    "popularity": "Popularity",
}


def metric_names(metrics: Mapping[str, float]) -> list[str]:
    """Metric families present in a metrics dict, in the standard order."""
    present = {key.partition("@")[0] for key in metrics}
    return [name for name in METRIC_TITLES if name in present]


def format_metrics_table(metrics: Mapping[str, float], cutoffs: Sequence[int]) -> str:
    """One row per metric family, one column per cut-off."""
    ks = sorted(set(cutoffs))
    lines = ["metric      " + "".join(f"{'@' + str(k):>10}" for k in ks)]
    for name in metric_names(metrics):
        values = "".join(f"{metrics.get(f'{name}@{k}', math.nan):>10.4f}" for k in ks)
        lines.append(f"{name:<12}{values}")
    return "\n".join(lines)


def format_breakdown(breakdown: Mapping[str, list[dict[str, Any]]], k: int) -> str:
    """Rank metrics at cut-off k per session-length and per position bucket."""
    blocks = []
    for key, title in (("by_session_length", "session length"), ("by_position", "position (events seen)")):
        rows = breakdown.get(key, [])
        if not rows:
            continue
        lines = [f"{title:<24}{'events':>9}{'recall@' + str(k):>12}{'mrr@' + str(k):>12}{'ndcg@' + str(k):>12}"]
        for row in rows:
            m = row["metrics"]
            lines.append(
                f"{row['bucket']:<24}{row['n_events']:>9}{m[f'recall@{k}']:>12.4f}"
                f"{m[f'mrr@{k}']:>12.4f}{m[f'ndcg@{k}']:>12.4f}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats with 4 decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_markdown(results: Mapping[str, Mapping[str, float]], cutoffs: Sequence[int]) -> str:
    """Side-by-side Markdown: accuracy (Recall, MRR at every k) and then NDCG/coverage/popularity."""
    ks = sorted(set(cutoffs))
    blocks = []
    for names in (("recall", "mrr"), ("ndcg", "coverage", "popularity")):
        header = ["name"] + [f"{METRIC_TITLES[n]}@{k}" for n in names for k in ks]
        rows = []
        for label, metrics in results.items():
            rows.append([label] + [metrics.get(f"{n}@{k}", math.nan) for n in names for k in ks])
        if any(not math.isnan(v) for row in rows for v in row[1:]):
            blocks.append(markdown_table(header, rows))
    return "\n\n".join(blocks)


def plot_metrics(
    results: Mapping[str, Mapping[str, float]],
    cutoffs: Sequence[int],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """One PNG: a panel per metric family, the metric against k, one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(set(cutoffs))
    names = []
    for metrics in results.values():
        names += [n for n in metric_names(metrics) if n not in names]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, metrics in results.items():
            ys = [metrics.get(f"{name}@{k}", math.nan) for k in ks]
            ax.plot(ks, ys, marker="o", label=label)
        ax.set_title(f"{METRIC_TITLES[name]}@k")
        ax.set_xlabel("k")
        ax.set_xticks(ks)
        ax.grid(True, alpha=0.3)
    spare = list(axes.flat)[len(names):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    bottom = 0.0
    if len(results) > 1 and spare:  # the legend fills the first empty panel
        spare[0].legend(handles, labels, loc="center", frameon=False)
    elif len(results) > 1:
        ncol = min(len(labels), 4)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
        bottom = min(0.3, 0.05 * math.ceil(len(labels) / ncol) / rows + 0.03)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
