"""Relation figure: every head's score on one relation beside its suppression score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from headatlas.report.grid_axes import check_output, draw_head_grid, panel_size, save_figure
from headatlas.report.head_grids import relation_grid
from headatlas.report.palette import score_colormap
from headatlas.report.titles import class_level_of
from headatlas.store import MapResults

TOP_N = 5
"""Heads annotated on each panel of the relation figure."""


@dataclass(frozen=True)
class TopHead:
    """One of the best-scoring heads on a panel."""

    rank: int
    layer: int
    head: int
    score: float

    @property
    def text(self) -> str:
        """How the head is written on the figure, e.g. ``L12H3 0.83``."""
        return f"L{self.layer}H{self.head} {self.score:.2f}"


def top_heads(grid: np.ndarray, n: int = TOP_N) -> list[TopHead]:
    """The ``n`` highest positive cells of a (n_heads, n_layers) grid; ties by layer, then head."""
    heads, layers = np.nonzero(np.nan_to_num(grid, nan=0.0) > 0)
    values = grid[heads, layers]
    order = np.lexsort((heads, layers, -values))[:n]
    return [
        TopHead(rank=i + 1, layer=int(layers[j]), head=int(heads[j]), score=float(values[j]))
        for i, j in enumerate(order)
    ]


def plot_relation(
    results: MapResults, relation: str, out: Path | None = None, top_n: int = TOP_N
) -> Figure:
    """Two panels for one relation: relation score and suppression score of every head.

    Both use a 0–1 colour scale with one colorbar; the ``top_n`` heads of each panel are ringed
    and numbered on the grid and listed as ``L{layer}H{head} score`` under the panel. Raises
    UnknownRelationError (listing the available relations) for a relation without scores.
    """
    if out is not None:
        check_output(out)
    panels = [
        ("Relation score", relation_grid(results, relation, "score")),
        ("Suppression score", relation_grid(results, relation, "suppression_score")),
    ]
    category = results.scores.loc[results.scores["relation"] == relation, "category"].iloc[0]
    panel_in = panel_size(results.n_layers, results.n_heads)
    fig = Figure(figsize=(2 * (panel_in[0] + 0.7) + 1.0, panel_in[1] + 2.0), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    cmap, norm = score_colormap(), Normalize(0.0, 1.0)
    image = None
    for ax, (title, grid) in zip(axes, panels):
        image = draw_head_grid(ax, grid, cmap, norm, panel_in, separator_color="#00000040")
        ax.set_title(title, fontsize=11)
        best = top_heads(grid, top_n)
        _mark_top_heads(ax, best)
        _list_top_heads(ax, best, panel_in)
    assert image is not None
    bar = fig.colorbar(image, ax=list(axes), shrink=0.85, pad=0.02)
    bar.set_label("score (0–1)")
    note = (
        " — class-level: shuffled targets score alike"
        if relation in class_level_of(results)
        else ""
    )
    fig.suptitle(f"{results.display_name} — {relation} ({category}){note}", fontsize=12)
    if out is not None:
        save_figure(fig, out)
    return fig


def _list_top_heads(ax: Axes, best: list[TopHead], panel_in: tuple[float, float]) -> None:
    # A legend under the panel: constrained layout makes room for it, unlike free text.
    handles = [Line2D([], [], linestyle="none", label=f"{h.rank}. {h.text}") for h in best]
    if not handles:
        handles = [Line2D([], [], linestyle="none", label="no head scores above 0")]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.45 / panel_in[1]),  # just below the x label
        ncols=max(1, min(len(handles), int(panel_in[0] // 1.25))),
        handlelength=0,
        handletextpad=0,
        columnspacing=1.4,
        fontsize=8,
        frameon=False,
        title="Top heads",
        title_fontsize=8,
    )


def _mark_top_heads(ax: Axes, best: list[TopHead]) -> None:
    outline = [patheffects.withStroke(linewidth=2.2, foreground="black")]
    for h in best:
        ax.plot(
            h.layer,
            h.head,
            marker="o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="white",
            markeredgewidth=1.4,
            path_effects=outline,
            gid=f"top-{h.rank}",
        )
        ax.annotate(
            str(h.rank),
            (h.layer, h.head),
            xytext=(5, 5),
            textcoords="offset points",
            color="white",
            fontsize=8,
            fontweight="bold",
            path_effects=outline,
            annotation_clip=True,
        )
