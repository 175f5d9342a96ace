"""QK grid: every head's static duplicate-token score (what it reads), one panel per model,
drawn like the category grid; each panel's caption says whether the reading predicts inference
on that model (the r calibrate measured) and so whether heads are labelled by it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from headatlas.errors import ResultsError
from headatlas.report.grid_axes import check_output, draw_head_grid, panel_size, save_figure
from headatlas.report.palette import score_colormap
from headatlas.scoring.qk_labels import map_agreement
from headatlas.store import MapResults


def qk_grid(results: MapResults, column: str = "dup_score") -> np.ndarray:
    """``column`` of qk_scores.parquet as an (n_heads, n_layers) grid, NaN where absent.
    Raises ResultsError when the map has no QK scores."""
    table = results.qk()
    if table is None:
        raise ResultsError(
            f"{results.directory} has no QK scores: run `headatlas map MODEL --qk` first"
        )
    grid = np.full((results.n_heads, results.n_layers), np.nan)
    ok = table["layer"].between(0, results.n_layers - 1) & table["head"].between(
        0, results.n_heads - 1
    )
    t = table[ok]
    grid[t["head"].to_numpy(dtype=int), t["layer"].to_numpy(dtype=int)] = t[column].to_numpy()
    return grid


def qk_caption(results: MapResults) -> str:
    """The panel caption: the duplicate-token reading's r against inference and whether heads
    are labelled by it (below its target, or not measured: not)."""
    agreement = map_agreement(results)
    if agreement is None:
        return ""
    dup = agreement["duplicate_token"]
    if dup["r"] is None:
        return f"{dup['reading']}: r vs inference not measured, no labels"
    if dup["reaches_target"]:
        return f"{dup['reading']}: r = {dup['r']:.2f} vs inference, used for labels"
    return f"{dup['reading']}: r = {dup['r']:.2f} < {dup['target']}, not used for labels"


def plot_qk_grid(results: Sequence[MapResults], out: Path | None = None) -> Figure:
    """One panel per model: the static duplicate-token score of every head (0–1), captioned
    with the reading's agreement with inference (:func:`qk_caption`)."""
    if out is not None:
        check_output(out)
    sizes = [panel_size(r.n_layers, r.n_heads) for r in results]
    width = sum(w + 0.7 for w, _ in sizes) + 1.0
    height = max(h for _, h in sizes) + 1.6
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    cmap, norm = score_colormap(), Normalize(0.0, 1.0)
    image = None
    for ax, res, size in zip(axes, results, sizes):
        agreement = map_agreement(res) or {}
        column = agreement.get("duplicate_token", {}).get("column", "dup_score")
        table = res.qk()
        grid = qk_grid(
            res, column if table is not None and column in table.columns else "dup_score"
        )
        image = draw_head_grid(ax, grid, cmap, norm, size, separator_color="#00000040")
        caption = qk_caption(res)
        ax.set_title(f"{res.display_name}\n{caption}" if caption else res.display_name,
                     fontsize=11 if not caption else 9)  # fmt: skip
    assert image is not None
    bar = fig.colorbar(image, ax=list(axes), shrink=0.85, pad=0.02)
    bar.set_label("duplicate-token score (static, 0–1; rank or attention share as calibrated)")
    fig.suptitle("What heads read: attention to an earlier copy of the current token", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig
