"""The cross-model views of a sweep, written beside its combined tables in ``OUT/sweep/``:
three figures and ``atlas.html``, one self-contained page (figures inlined as PNG, no script;
a Content-Security-Policy allows only its own stylesheet and inline images) that links each
model's results folder."""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from headatlas.compare.cross_model import relation_by_model
from headatlas.errors import ResultsError
from headatlas.report.cross_model_figures import (
    plot_checkpoint_evolution,
    plot_depth_profile,
    plot_relation_by_model,
)
from headatlas.report.grid_axes import save_figure
from headatlas.store import CATEGORIES, SCORES, write_text_atomic

RELATIONS_FIGURE = "relations_by_model.png"
DEPTH_FIGURE = "depth_profile.png"
EVOLUTION_FIGURE = "checkpoint_evolution.png"
SWEEP_ATLAS = "atlas.html"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<p class="note">{n} maps. A head implements a relation when its score is at least {threshold:g}.
Relative depth puts every model's first layer at 0 and its last at 1.</p>
{sections}
</body>
</html>
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig: Figure, alt: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}"></figure>'
    )


def _models_table(scores: pd.DataFrame, folders: Mapping[str, str], page_dir: Path) -> str:
    rows = ["<tr><th class=name>map</th><th>layers</th><th>heads</th><th>step</th>"
            "<th class=name>results</th></tr>"]  # fmt: skip
    for entry, g in scores.groupby("entry", sort=False):
        first = g.iloc[0]
        step = "" if pd.isna(first["step"]) else str(int(first["step"]))
        folder = Path(folders.get(str(entry), ""))
        try:
            link = folder.relative_to(page_dir.parent).as_posix()
            href = f'<a href="../{html.escape(link)}/">{html.escape(link)}</a>'
        except ValueError:
            href = html.escape(str(folder))
        rows.append(
            f"<tr><td class=name>{html.escape(str(entry))}</td><td>{int(first['n_layers'])}</td>"
            f"<td>{int(first['n_heads'])}</td><td>{step}</td><td class=name>{href}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _best_table(scores: pd.DataFrame, threshold: float) -> str:
    best, count = relation_by_model(scores, threshold)
    names = scores.groupby("entry", sort=False)["display"].first()
    head = "".join(f"<th>{html.escape(str(names[e]))}</th>" for e in best.columns)
    rows = [f"<tr><th class=name>relation</th>{head}</tr>"]
    for rel in best.index:
        cells = "".join(
            "<td></td>" if pd.isna(b) else f"<td>{b:.2f} ({int(c)})</td>"
            for b, c in zip(best.loc[rel], count.loc[rel])
        )
        rows.append(f"<tr><td class=name>{html.escape(str(rel))}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_sweep_html(
    scores: pd.DataFrame,
    categories: pd.DataFrame,
    threshold: float,
    folders: Mapping[str, str],
    page: Path,
) -> str:
    """The sweep page as one self-contained, pure-ASCII HTML string."""
    css = resources.files("headatlas.report").joinpath("assets", "sweep.css").read_text("utf-8")
    sections = [
        "<h2>Maps</h2>" + _models_table(scores, folders, page.parent),
        "<h2>Relations across models</h2>"
        + _figure(plot_relation_by_model(scores, threshold), "relation by model heatmaps")
        + "<p class=note>best head's score (heads at or above the threshold)</p>"
        + _best_table(scores, threshold),
        "<h2>Categories by relative depth</h2>"
        + _figure(plot_depth_profile(categories), "share of heads per category by depth"),
    ]
    evolution = plot_checkpoint_evolution(scores)
    if evolution is not None:
        sections.append(
            "<h2>Across training checkpoints</h2>"
            + _figure(evolution, "relation scores versus training step")
        )
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'"
    text = _PAGE.format(
        csp=csp,
        title="headatlas sweep",
        css=css,
        n=scores["entry"].nunique(),
        threshold=threshold,
        sections="\n".join(sections),
    )
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def write_sweep_views(folder: Path, folders: Mapping[str, str], threshold: float) -> list[Path]:
    """Write the figures and ``atlas.html`` of a sweep into ``folder`` (``OUT/sweep/``, where
    the combined tables are) for the maps in ``folders`` (entry -> results folder), and
    return their paths."""
    folder = Path(folder)
    paths = folder / SCORES, folder / CATEGORIES
    if not all(p.is_file() for p in paths):
        raise ResultsError(
            f"{folder} holds no combined {SCORES} and {CATEGORIES}: run `headatlas sweep` first"
        )
    scores, categories = pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
    keep = set(folders)
    scores = scores[scores["entry"].isin(keep)]
    categories = categories[categories["entry"].isin(keep)]
    written = [
        save_figure(plot_relation_by_model(scores, threshold), folder / RELATIONS_FIGURE),
        save_figure(plot_depth_profile(categories), folder / DEPTH_FIGURE),
    ]
    evolution = plot_checkpoint_evolution(scores)
    if evolution is not None:
        written.append(save_figure(evolution, folder / EVOLUTION_FIGURE))
    page = folder / SWEEP_ATLAS
    write_text_atomic(render_sweep_html(scores, categories, threshold, folders, page), page)
    written.append(page)
    return written
