"""Where a describer saw a pattern: the share of heads per layer whose description is not "Unclear".

This is MAPS §5's figure (Elhelo & Geva, 2025): for each layer, of the heads that got a parsed
description (status ``ok`` or ``unclear`` in ``descriptions.jsonl``), the share the describer
found a pattern in (``ok``). Heads whose answer failed to parse, or that were not described,
count in neither; a layer with no described head has no bar. One panel per model, as a PNG, SVG
or PDF (:func:`plot_pattern_shares`), and as a self-contained SVG section of the HTML atlas
(:func:`pattern_section_html`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from headatlas import store
from headatlas.describe.records import read_records
from headatlas.errors import ResultsError
from headatlas.report.grid_axes import panel_grid, save_figure

SHARE_COLUMNS = ("layer", "heads", "described", "detected", "failed", "share")
"""Columns of :func:`pattern_shares`: heads in the layer, heads with a parsed description, of
those with a pattern, heads whose answer failed, and detected / described (NaN when none)."""

_BAR_COLOR = "#3b7dd8"


def pattern_shares(directory: str | Path) -> pd.DataFrame:
    """One row per layer of the model in ``directory``: how many heads show a pattern."""
    directory = Path(directory)
    model = store.read_manifest(directory)["model"]
    n_layers, n_heads = int(model["n_layers"]), int(model["n_heads"])
    described = np.zeros(n_layers, dtype=int)
    detected = np.zeros(n_layers, dtype=int)
    failed = np.zeros(n_layers, dtype=int)
    for (layer, head), record in read_records(directory / store.DESCRIPTIONS).items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            continue
        status = record.get("status")
        if status in ("ok", "unclear"):
            described[layer] += 1
            detected[layer] += status == "ok"
        elif status == "failed":
            failed[layer] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(described > 0, detected / np.maximum(described, 1), np.nan)
    return pd.DataFrame(
        {
            "layer": np.arange(n_layers),
            "heads": n_heads,
            "described": described,
            "detected": detected,
            "failed": failed,
            "share": share,
        },
        columns=list(SHARE_COLUMNS),
    )


def _display_name(directory: Path) -> str:
    model = store.read_manifest(directory)["model"]
    return str(model.get("display_name") or model.get("name") or directory.name)


def _checked(directories: Sequence[str | Path]) -> list[Path]:
    paths = [Path(d) for d in directories]
    panel_grid(len(paths))  # one to six models
    for path in paths:
        if not (path / store.DESCRIPTIONS).is_file():
            raise ResultsError(
                f"{path} holds no {store.DESCRIPTIONS}: run `headatlas describe {path} --all` first"
            )
    return paths


def plot_pattern_shares(directories: Sequence[str | Path], out: Path | None = None) -> Figure:
    """One bar panel per model (1 to 6): the share of described heads per layer with a pattern."""
    paths = _checked(directories)
    rows, cols = panel_grid(len(paths))
    fig = Figure(figsize=(4.6 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, path in zip(axes, paths):
        table = pattern_shares(path)
        shown = table["share"].fillna(0.0) * 100
        ax.bar(table["layer"], shown, width=0.8, color=_BAR_COLOR)
        described, detected = int(table["described"].sum()), int(table["detected"].sum())
        overall = f"{100 * detected / described:.0f}%" if described else "n/a"
        ax.set_title(
            f"{_display_name(path)}: {detected} of {described} described heads ({overall})",
            fontsize=9,
        )
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("heads with a pattern (%)", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.6, len(table) - 0.4)
        ax.tick_params(labelsize=7)
        missing = table.loc[table["described"] == 0, "layer"]
        for layer in missing:  # not described: say so instead of drawing a zero
            ax.text(layer, 2, "–", ha="center", va="bottom", fontsize=7, color="#888888")
    for ax in axes[len(paths) :]:
        ax.set_visible(False)
    if out is not None:
        save_figure(fig, out)
    return fig


def pattern_section_html(directory: str | Path) -> str:
    """The atlas section of one model: an inline SVG bar chart (no script, no style needed).

    Empty when the model has no descriptions.
    """
    directory = Path(directory)
    if not (directory / store.DESCRIPTIONS).is_file():
        return ""
    table = pattern_shares(directory)
    if not int(table["described"].sum()):
        return ""
    bar_w, gap, height, pad = 14, 3, 120, 28
    width = pad + len(table) * (bar_w + gap) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + pad + 8}" '
        f'role="img" aria-label="share of heads per layer with a pattern">',
        f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999999"/>',
        '<text x="2" y="10" font-size="9" fill="#555555">100%</text>',
        f'<text x="2" y="{height}" font-size="9" fill="#555555">0%</text>',
    ]
    for row in table.itertuples(index=False):
        x = pad + int(row.layer) * (bar_w + gap)
        title = (
            f"layer {row.layer}: {row.detected} of {row.described} described heads "
            f"with a pattern ({row.failed} failed, {row.heads - row.described - row.failed} "
            "not described)"
        )
        if row.described:
            h = round(float(row.share) * (height - 12))
            parts.append(
                f'<rect class="pattern-bar" data-layer="{row.layer}" '
                f'data-share="{float(row.share):.4f}" x="{x}" y="{height - h}" width="{bar_w}" '
                f'height="{h}" fill="{_BAR_COLOR}"><title>{html.escape(title)}</title></rect>'
            )
        if row.layer % 5 == 0:
            parts.append(
                f'<text x="{x + bar_w / 2}" y="{height + 12}" font-size="9" '
                f'text-anchor="middle" fill="#555555">{row.layer}</text>'
            )
    parts.append(
        f'<text x="{width / 2}" y="{height + 26}" font-size="10" text-anchor="middle" '
        'fill="#333333">layer</text></svg>'
    )
    described, detected = int(table["described"].sum()), int(table["detected"].sum())
    name = html.escape(_display_name(directory))
    return (
        f'<section class="pattern-shares" data-model="{name}"><h2>{name}: heads with a pattern, '
        f"per layer</h2><p>{detected} of {described} described heads: the share per layer "
        'whose description is not "Unclear" (MAPS &sect;5).</p>' + "".join(parts) + "</section>"
    )
