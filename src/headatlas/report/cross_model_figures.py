"""Figures of many maps side by side (a sweep): relation x model, category share by relative
depth, and relation scores across training checkpoints. Input: the tables of
:mod:`headatlas.compare.cross_model`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from headatlas.compare.cross_model import (
    checkpoint_evolution,
    depth_profile,
    entry_order,
    relation_by_model,
)
from headatlas.report.grid_axes import check_output, save_figure
from headatlas.report.palette import label_colors, score_colormap


def _short_names(df: pd.DataFrame) -> dict[str, str]:
    """entry -> display name (the entry itself when two entries share a display name)."""
    names = df.groupby("entry", sort=False)["display"].first().to_dict()
    counts = pd.Series(list(names.values())).value_counts()
    return {e: (n if counts[n] == 1 else e) for e, n in names.items()}


def plot_relation_by_model(
    scores: pd.DataFrame, threshold: float, out: Path | None = None
) -> Figure:
    """Two relation x model heatmaps: the best head's score (0-1), and the number of heads
    at or above ``threshold``; each cell is written out."""
    if out is not None:
        check_output(out)
    best, count = relation_by_model(scores, threshold)
    names = _short_names(scores)
    cols = [names[e] for e in best.columns]
    n_rel, n_mod = best.shape
    cell_w = max(0.55, max(len(c) for c in cols) * 0.07)
    fig = Figure(figsize=(2 * n_mod * cell_w + 5.0, 0.28 * n_rel + 2.2), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    panels = (
        (best, "best head's score", score_colormap(), 1.0, "{:.2f}"),
        (count, f"heads with score ≥ {threshold:g}", "Blues", None, "{:.0f}"),
    )
    for ax, (table, title, cmap, vmax, fmt) in zip(axes, panels):
        values = table.to_numpy(dtype=float)
        top = vmax if vmax is not None else max(1.0, float(np.nanmax(values)))
        image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=top, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                dark = v / top > 0.55 if cmap == "Blues" else v / top < 0.55
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_xticks(range(n_mod), cols, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(n_rel), list(table.index), fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    axes[1].set_yticklabels([])
    fig.suptitle("Relations across models", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig


def plot_depth_profile(categories: pd.DataFrame, bins: int = 5, out: Path | None = None) -> Figure:
    """One panel per category: share of heads implementing it vs relative depth (0 = first
    layer, 1 = last), one line per model."""
    if out is not None:
        check_output(out)
    prof = depth_profile(categories, bins)
    cats = list(dict.fromkeys(prof["category"])) or ["(no category)"]
    names = _short_names(categories)
    fig = Figure(figsize=(3.0 * len(cats) + 1.5, 3.2), layout="constrained")
    axes = fig.subplots(1, len(cats), squeeze=False, sharey=True)[0]
    colors = _model_colors(entry_order(categories))
    for ax, cat in zip(axes, cats):
        part = prof[prof["category"] == cat]
        for entry, g in part.groupby("entry", sort=False):
            ax.plot(g["depth"], g["share"], marker="o", ms=3, lw=1.4, color=colors[entry],
                    label=names[entry])  # fmt: skip
        ax.set_title(cat, fontsize=10, color=label_colors([cat]).get(cat, "black"))
        ax.set_xlim(0, 1)
        ax.set_xlabel("relative depth")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of heads")
    axes[0].set_ylim(0, None)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle("Where each category lives, by relative depth", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig


def plot_checkpoint_evolution(
    scores: pd.DataFrame, top: int = 1, out: Path | None = None
) -> Figure | None:
    """A row per model with two or more ``step<N>`` checkpoints, a column per category: each
    relation's top-head score vs training step. None when no model has two checkpoints."""
    if out is not None:
        check_output(out)
    evo = checkpoint_evolution(scores, top)
    if evo.empty:
        return None
    models = list(dict.fromkeys(evo["model"]))
    cats = list(dict.fromkeys(evo["category"]))
    fig = Figure(figsize=(3.6 * len(cats) + 0.8, 3.0 * len(models) + 0.8), layout="constrained")
    axes = fig.subplots(len(models), len(cats), squeeze=False, sharey=True)
    what = "top head" if top == 1 else f"mean of the top {top} heads"
    log = evo["step"].min() > 0 and evo["step"].max() / evo["step"].min() > 50
    for row, model in zip(axes, models):
        for ax, cat in zip(row, cats):
            part = evo[(evo["model"] == model) & (evo["category"] == cat)]
            for rel, g in part.groupby("relation", sort=False):
                ax.plot(g["step"], g["score"], marker="o", ms=3, lw=1.2, label=rel)
            if log:
                ax.set_xscale("log")
            ax.set_title(f"{model} — {cat}", fontsize=9, color=label_colors([cat])[cat])
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if len(part):
                ax.legend(fontsize=6, loc="upper left", frameon=False)
        row[0].set_ylabel(f"score ({what})")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    fig.suptitle("Relation heads across training checkpoints", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig


def _model_colors(entries: list[str]) -> dict[str, tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(entries) <= 10 else "viridis"]
    n = max(len(entries) - 1, 1)
    return {e: cmap(i if len(entries) <= 10 else i / n) for i, e in enumerate(entries)}
