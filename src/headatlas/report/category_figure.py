"""Category figures: the label of every head, across models or split by category."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from headatlas.report.grid_axes import (
    check_output,
    check_style,
    draw_head_dots,
    draw_head_grid,
    panel_grid,
    panel_size,
    save_figure,
)
from headatlas.report.head_grids import category_grid, label_grid, scored_categories
from headatlas.report.palette import MISSING_COLOR, label_colormap, label_colors, label_order
from headatlas.report.titles import class_level_caption, panel_titles
from headatlas.scoring.categories import UNCLASSIFIED
from headatlas.store import MapResults

ALL_CATEGORIES_TITLE = "All Categories"

_LEGEND_ENTRY_IN = 1.3  # width of one legend entry ("2 categories") at font size 9

# Always drawn in the per-category series; Translation and custom categories only when scored.
_SERIES_ALWAYS = ("Algorithmic", "Knowledge", "Linguistic")
_SERIES_SCALE = 0.62  # four or five panels in a row: smaller cells than the atlas


def series_categories(results: MapResults) -> list[str]:
    """The category panels of ``plot_category_series``, after the "All Categories" panel."""
    scored = scored_categories(results)
    return [*_SERIES_ALWAYS, *(c for c in scored if c not in _SERIES_ALWAYS)]


def _labels_of(results: Sequence[MapResults]) -> list[str]:
    present: set[str] = set()
    for r in results:
        present |= set(r.categories["label"].dropna().astype(str))
    return label_order(present)


def _legend_handles(labels: list[str]) -> list[Patch]:
    colors = label_colors(labels)
    return [
        Patch(facecolor=colors[label], edgecolor="#999999", linewidth=0.5, label=label)
        for label in labels
    ]


def _label_norm(labels: list[str]) -> BoundaryNorm:
    return BoundaryNorm(np.arange(len(labels) + 1) - 0.5, len(labels))


def _draw(
    ax: Axes,
    grid: np.ndarray,
    cmap: Colormap,
    norm: Normalize,
    panel_in: tuple[float, float],
    style: str,
    background: float | None,
    **labels: str,
) -> None:
    if style == "dots":
        draw_head_dots(ax, grid, cmap, norm, panel_in, background=background, **labels)
    else:
        draw_head_grid(ax, grid, cmap, norm, panel_in, **labels)


def plot_category_atlas(
    results: Sequence[MapResults],
    out: Path | None = None,
    style: str = "cells",
    caption: str | None = None,
) -> Figure:
    """One panel per model (1 to 6) of every head coloured by its label, one shared legend.

    ``style``: "cells" (a grid of cells) or "dots" (one dot per head, Unclassified heads as
    small grey dots); ``caption``: a line under the panels.

    Panels are laid out 1×1, 1×2, 1×3, 2×2, 2×3, 2×3; each spans all layers (x) and heads (y) of
    its model. The legend on top lists the eight labels in ``LABELS`` order (plus any custom
    category label present). Writes ``out`` (PNG, SVG or PDF by extension) when given.
    """
    if out is not None:
        check_output(out)
    check_style(style)
    n_rows, n_cols = panel_grid(len(results))
    labels = _labels_of(results)
    cmap, norm = label_colormap(labels), _label_norm(labels)
    panel_in = max(panel_size(r.n_layers, r.n_heads) for r in results)
    # Wide enough for a legend of four columns even when the panels are small.
    width = max(n_cols * (panel_in[0] + 0.7) + 0.3, 4 * _LEGEND_ENTRY_IN + 0.3)
    height = n_rows * (panel_in[1] + 0.9) + 0.9 + (0.3 if caption else 0)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    titles = panel_titles(results)
    for i, ax in enumerate(axes.flat):
        if i >= len(results):
            ax.set_visible(False)
            continue
        r = results[i]
        _draw(ax, label_grid(r, labels), cmap, norm, panel_in, style, _background(labels))
        ax.set_title(titles[i], fontsize=11 if len(titles[i]) < 40 else 8)
    n_legend_cols = min(len(labels), max(1, int(width // _LEGEND_ENTRY_IN)))
    fig.legend(
        handles=_legend_handles(labels),
        loc="outside upper center",
        ncols=n_legend_cols,
        frameon=False,
        fontsize=9,
        handlelength=1.2,
        handleheight=1.2,
        columnspacing=1.2,
    )
    _caption(fig, [caption, class_level_caption(results)])
    if out is not None:
        save_figure(fig, out)
    return fig


def _background(labels: list[str]) -> float | None:
    return float(labels.index(UNCLASSIFIED)) if UNCLASSIFIED in labels else None


def plot_category_series(
    results: MapResults,
    out: Path | None = None,
    style: str = "cells",
    caption: str | None = None,
) -> Figure:
    """A row of panels for one model: all labels, then one panel per scored category.

    ``style`` and ``caption`` as in :func:`plot_category_atlas`.

    Panel titles are "All Categories", "Algorithmic", "Knowledge", "Linguistic", and
    "Translation" when translation relations have scores (custom categories follow). In a
    category panel a head takes that category's colour when it implements any relation of the
    category, else the Unclassified background. The legend sits left of the first panel.
    """
    if out is not None:
        check_output(out)
    check_style(style)
    labels = _labels_of([results])
    colors = label_colors(labels)
    categories = series_categories(results)
    panel_in = panel_size(results.n_layers, results.n_heads, scale=_SERIES_SCALE)
    n_panels = 1 + len(categories)
    width = n_panels * (panel_in[0] + 0.55) + 1.9
    height = panel_in[1] + 1.2 + (0.3 if caption else 0)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    _draw(
        axes[0],
        label_grid(results, labels),
        label_colormap(labels),
        _label_norm(labels),
        panel_in,
        style,
        _background(labels),
        xlabel="layer",
        ylabel="head",
    )
    axes[0].set_title(ALL_CATEGORIES_TITLE, fontsize=11)
    for ax, category in zip(axes[1:], categories):
        color = colors.get(category) or label_colors([*labels, category])[category]
        cmap = ListedColormap([colors[UNCLASSIFIED], color]).with_extremes(bad=MISSING_COLOR)
        _draw(
            ax,
            category_grid(results, category),
            cmap,
            BoundaryNorm([-0.5, 0.5, 1.5], 2),
            panel_in,
            style,
            0.0,
            xlabel="layer",
            ylabel="head",
        )
        ax.set_title(category, fontsize=11)
    fig.suptitle(results.display_name, fontsize=12)
    fig.legend(
        handles=_legend_handles(labels),
        loc="outside left center",
        frameon=False,
        fontsize=9,
        handlelength=1.2,
        handleheight=1.2,
    )
    _caption(fig, [caption, class_level_caption([results])])
    if out is not None:
        save_figure(fig, out)
    return fig


def _caption(fig: Figure, notes: Sequence[str | None]) -> None:
    """The notes under the panels, each wrapped to the figure's width (about 9 characters of
    9-point text per inch), so a long one is not cut at the edges."""
    width = max(40, int(fig.get_figwidth() * 9))
    lines = [textwrap.fill(note, width) for note in notes if note]
    if lines:
        fig.supxlabel("\n".join(lines), fontsize=9, color="#444444")
