"""Colours shared by the static figures and the HTML atlas: one per head label, one scale for scores."""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib.colors import Colormap, ListedColormap

from headatlas.scoring.categories import LABELS, UNCLASSIFIED

# tab10-like colours; Unclassified is a light grey so that classified heads stand out.
LABEL_COLORS: dict[str, str] = {
    UNCLASSIFIED: "#e6e6e6",
    "Algorithmic": "#1f77b4",
    "Knowledge": "#ff7f0e",
    "Linguistic": "#2ca02c",
    "Translation": "#d62728",
    "2 categories": "#9467bd",
    "3 categories": "#8c564b",
    "4 categories": "#e377c2",
}
"""Colour of every built-in head label, in legend order (same order as ``LABELS``)."""

# Custom relation categories (user relation files) get these, in order of first appearance.
EXTRA_COLORS: tuple[str, ...] = ("#bcbd22", "#17becf", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a")

SCORE_CMAP = "viridis"
"""Colour map of relation and suppression scores (0 to 1)."""

MISSING_COLOR = "#ffffff"
"""Colour of a cell with no data (a head absent from the tables)."""


def label_order(present: Iterable[str]) -> list[str]:
    """Every built-in label in legend order, then any other label present, sorted."""
    extra = sorted(set(present) - set(LABELS))
    return [*LABELS, *extra]


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """A colour for each label: the fixed palette for built-in labels, extra colours after."""
    colors: dict[str, str] = {}
    n_extra = 0
    for label in labels:
        if label in LABEL_COLORS:
            colors[label] = LABEL_COLORS[label]
        else:
            colors[label] = EXTRA_COLORS[n_extra % len(EXTRA_COLORS)]
            n_extra += 1
    return colors


def label_colormap(labels: list[str]) -> Colormap:
    """A colour map where integer ``i`` is the colour of ``labels[i]``; NaN draws as missing."""
    cmap = ListedColormap(list(label_colors(labels).values()), name="headatlas-labels")
    return cmap.with_extremes(bad=MISSING_COLOR)


def score_colormap() -> Colormap:
    """The 0–1 score colour map, with missing values drawn white."""
    from matplotlib import colormaps

    return colormaps[SCORE_CMAP].with_extremes(bad=MISSING_COLOR)
