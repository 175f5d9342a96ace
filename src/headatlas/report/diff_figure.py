"""The figure of a map diff: heads gained and lost per relation, and how the best score of
each layer moved per relation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from headatlas.compare.diff import MapDiff
from headatlas.report.grid_axes import check_output, save_figure

GAINED = "#2ca02c"
LOST = "#d62728"


def plot_diff(diff: MapDiff, out: Path | None = None) -> Figure:
    """Left: heads gained (right of 0) and lost (left of 0) per relation. Right: relation x
    layer change of the layer's best score (B - A, red up, blue down)."""
    if out is not None:
        check_output(out)
    summary = diff.summary()
    relations = list(summary["relation"])
    by_layer = diff.heads.groupby(["relation", "layer"])
    best_a = by_layer["score_a"].max().unstack()
    best_b = by_layer["score_b"].max().unstack()
    delta = (best_b - best_a).reindex(relations)
    n_rel, n_layers = delta.shape
    fig = Figure(
        figsize=(4.5 + min(0.18 * n_layers, 9.0) + 2.0, 0.3 * n_rel + 2.0), layout="constrained"
    )
    bars, heat = fig.subplots(
        1, 2, gridspec_kw={"width_ratios": [4.5, min(0.18 * n_layers, 9.0) + 1.0]}
    )
    y = np.arange(n_rel)
    bars.barh(y, summary["n_gained"], color=GAINED, label="gained")
    bars.barh(y, -summary["n_lost"], color=LOST, label="lost")
    bars.axvline(0, color="black", lw=0.8)
    bars.set_yticks(y, relations, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel(f"heads (score ≥ {diff.threshold:g})")
    bars.legend(fontsize=8, loc="lower right", frameon=False)
    bars.set_title("heads gained / lost", fontsize=10)
    values = delta.to_numpy(dtype=float)
    lim = max(0.05, float(np.nanmax(np.abs(values))) if values.size else 0.05)
    image = heat.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    heat.set_yticks(y, [])
    step = max(1, n_layers // 12)
    heat.set_xticks(range(0, n_layers, step))
    heat.set_xlabel("layer")
    heat.set_title("Δ best score per layer", fontsize=10)
    fig.colorbar(image, ax=heat, shrink=0.8, pad=0.02, label="score change (B − A)")
    fig.suptitle(f"{diff.a} → {diff.b}", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig
