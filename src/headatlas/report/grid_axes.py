"""Drawing one layer × head grid on matplotlib axes, sized and ticked to stay legible.

The same helpers lay out a 2-layer × 4-head toy model and an 80-layer × 64-head one: panels
scale with the grid between fixed bounds, ticks thin out to a round step, and thin white
separators appear between cells only when cells are big enough to show them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from headatlas.errors import OutputFormatError, TooManyModelsError
from headatlas.store import atomic_path

FORMATS = (".png", ".svg", ".pdf")
"""Extensions the figure writers produce; the format follows the extension."""

SAVE_DPI = 150

# Inches per cell, and the bounds a panel's size is clamped to.
_CELL_IN = 0.09
_PANEL_W = (2.4, 7.2)
_PANEL_H = (2.0, 5.8)
_TICK_STEPS = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500)

MAX_MODELS = 6

STYLES = ("cells", "dots")
"""How a head grid is drawn: a grid of cells (the heatmap seeds) or one dot per head on
layer × head axes (the scatter seeds)."""

_GRID_SHAPES = {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 5: (2, 3), 6: (2, 3)}


def panel_grid(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid for 1 to 6 models."""
    if n_panels < 1:
        raise TooManyModelsError("no results folder given: pass at least one")
    if n_panels > MAX_MODELS:
        raise TooManyModelsError(
            f"{n_panels} results folders given, a figure lays out at most {MAX_MODELS}: "
            "split them over several figures"
        )
    return _GRID_SHAPES[n_panels]


def panel_size(n_layers: int, n_heads: int, scale: float = 1.0) -> tuple[float, float]:
    """(width, height) in inches of one panel for a model of this shape.

    ``scale`` shrinks cells and the largest panel (figures with many panels in a row); the
    smallest panel stays the same so toy models keep readable ticks.
    """
    cell = _CELL_IN * scale
    w = float(np.clip(n_layers * cell, _PANEL_W[0], max(_PANEL_W[0], _PANEL_W[1] * scale)))
    h = float(np.clip(n_heads * cell, _PANEL_H[0], max(_PANEL_H[0], _PANEL_H[1] * scale)))
    return w, h


def tick_step(n: int, length_in: float) -> int:
    """A round tick step that puts at most about 2.2 ticks per inch on an axis of ``n`` cells."""
    max_ticks = max(2, int(length_in * 2.2))
    for step in _TICK_STEPS:
        if n / step <= max_ticks:
            return step
    return int(np.ceil(n / max_ticks))


def check_output(out: Path) -> Path:
    """``out`` as a Path, or OutputFormatError when its extension is not PNG, SVG or PDF."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise OutputFormatError(
            f"cannot write {out}: the extension picks the format, use one of {', '.join(FORMATS)}"
        )
    return out


def save_figure(fig: Figure, out: Path) -> Path:
    """Write ``fig`` to ``out`` (format from the extension), creating the folder; atomically,
    so a failed write (a full disk) leaves the old image or none, never a cut-short one."""
    out = check_output(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lower()[1:], dpi=SAVE_DPI, metadata=_metadata(out))
    return out


def _metadata(out: Path) -> dict[str, str | None]:
    # Drop the creation date so the same results give byte-identical SVG/PDF files.
    suffix = out.suffix.lower()
    if suffix == ".svg":
        return {"Date": None}
    if suffix == ".pdf":
        return {"CreationDate": None}
    return {}


def draw_head_grid(
    ax: Axes,
    grid: np.ndarray,
    cmap: Colormap,
    norm: Normalize,
    panel_in: tuple[float, float],
    xlabel: str = "Layer",
    ylabel: str = "Head",
    separator_color: str = "white",
) -> AxesImage:
    """Draw ``grid`` (n_heads, n_layers) with layers on x, heads on y, head 0 at the bottom."""
    n_heads, n_layers = grid.shape
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        norm=norm,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, n_layers - 0.5, -0.5, n_heads - 0.5),
    )
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(-0.5, n_heads - 0.5)
    width_in, height_in = panel_in
    ax.set_xticks(np.arange(0, n_layers, tick_step(n_layers, width_in)))
    ax.set_yticks(np.arange(0, n_heads, tick_step(n_heads, height_in)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(labelsize=8, length=2.5)
    # White separators when a cell is at least ~4 points on its short side.
    cell_pt = 72 * min(width_in / n_layers, height_in / n_heads)
    if cell_pt >= 4:
        ax.set_xticks(np.arange(-0.5, n_layers, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_heads, 1), minor=True)
        ax.grid(which="minor", color=separator_color, linewidth=min(1.5, cell_pt / 12))
        ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
    return image


def check_style(style: str) -> str:
    """``style`` when it is one of :data:`STYLES`, else OutputFormatError naming them."""
    if style not in STYLES:
        raise OutputFormatError(
            f"figure style '{style}' is unknown: use one of {', '.join(STYLES)}"
        )
    return style


def draw_head_dots(
    ax: Axes,
    grid: np.ndarray,
    cmap: Colormap,
    norm: Normalize,
    panel_in: tuple[float, float],
    xlabel: str = "Layer",
    ylabel: str = "Head",
    background: float | None = None,
) -> None:
    """Draw ``grid`` (n_heads, n_layers) as one dot per head, layers on x, heads on y.

    Dots are sized to the cell (a diameter of 80 % of its short side, at least 1.5 points), so
    an 80 × 64 grid stays legible; heads whose value is ``background`` (Unclassified) get a
    quarter-size dot, so the labelled heads stand out; absent heads (NaN) get none.
    """
    n_heads, n_layers = grid.shape
    width_in, height_in = panel_in
    cell_pt = 72 * min(width_in / max(1, n_layers), height_in / max(1, n_heads))
    size = max(1.5, 0.8 * cell_pt) ** 2  # marker area in points²
    heads, layers = np.nonzero(~np.isnan(grid))
    values = grid[heads, layers]
    colors = cmap(norm(values))
    sizes = np.full(values.shape, size)
    if background is not None:
        sizes[values == background] = size / 4
    ax.scatter(layers, heads, s=sizes, c=colors, marker="o", linewidths=0)
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(-0.5, n_heads - 0.5)
    ax.set_xticks(np.arange(0, n_layers, tick_step(n_layers, width_in)))
    ax.set_yticks(np.arange(0, n_heads, tick_step(n_heads, height_in)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(labelsize=8, length=2.5)
    ax.set_facecolor("white")
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
