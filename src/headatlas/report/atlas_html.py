"""The interactive atlas: one self-contained HTML file with every head of one or more models.

The page has no external resources: CSS and JS are inlined from ``report/assets/`` and the data
rides along as JSON in a ``<script type="application/json">`` block. A Content-Security-Policy
allows only those two inline blocks (by hash), so even a hostile token string that somehow
reached the DOM as markup could neither run script nor fetch anything.

Data layout per model (compact, to open fast at 5,120 heads × 20 relations): a head's index is
``layer * n_heads + head``; ``label`` holds an index into ``labels`` per head; ``cats`` a bitmask
over ``categories`` per head; ``score[r]`` / ``supp[r]`` one integer per head in thousandths
(−1 = no score) for relation ``r``. ``validation`` is the model's
``validation/summary.json`` (from ``headatlas validate``) reduced to what the page shows, or
null when there is none.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headatlas.errors import OutputFormatError
from headatlas.report.grid_axes import MAX_MODELS
from headatlas.report.head_grids import relation_names
from headatlas.report.head_pages import head_page_data
from headatlas.report.palette import label_colors, label_order, score_colormap
from headatlas.report.titles import class_level_of, panel_titles
from headatlas.scoring.categories import CATEGORIES, DEFAULT_THRESHOLD
from headatlas.store import MapResults, write_text_atomic

MAX_SALIENT_TOKENS = 8
"""Salient operations kept per head in the page."""

MAX_MAPPINGS = 8
"""Mapped-to tokens kept per salient operation."""

_SCALE_STOPS = 11  # samples of the score colour map handed to the page

VALIDATION_SUMMARY = Path("validation") / "summary.json"
"""Where ``headatlas validate`` leaves its per-relation summary, inside a results folder."""

_CORRELATION_FIELDS = (
    "r_without_context",
    "p_without_context",
    "r_with_context",
    "p_with_context",
    "max_static_score",
    "n_prompts",
)
_CAUSAL_NUMBERS = (
    "n_prompts",
    "m",
    "base_accuracy",
    "accuracy_relation_heads",
    "accuracy_random_mean",
    "accuracy_random_sd",
    "drop_relation_heads",
    "drop_random_mean",
    "control_base_accuracy",
    "control_accuracy_after",
    "control_drop_mean",
)
_CAUSAL_TEXTS = ("controls", "skipped")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<noscript>This atlas needs JavaScript to draw its grids.</noscript>
<div id="app"></div>
{patterns}
<script type="application/json" id="atlas-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def embed_json(obj: Any) -> str:
    """JSON that can sit inside a ``<script>`` element without ending or commenting it.

    Every ``<``, ``>`` and ``&`` is written as a ``\\u`` escape, so no ``</script``, ``<!--``
    or ``-->`` can appear in the text; the JSON still parses to the same strings.
    """
    # ensure_ascii also keeps the page pure ASCII, whatever the locale's file encoding.
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    return text


def _thousandths(values: pd.Series) -> list[int]:
    return [-1 if math.isnan(v) else round(v * 1000) for v in values.astype(float)]


def _head_index(df: pd.DataFrame, n_heads: int) -> pd.Series:
    return df["layer"].astype(int) * n_heads + df["head"].astype(int)


def _in_range(df: pd.DataFrame, results: MapResults) -> pd.DataFrame:
    ok = df["layer"].between(0, results.n_layers - 1) & df["head"].between(0, results.n_heads - 1)
    return df[ok]


def _salient_by_head(results: MapResults) -> dict[str, list[Any]]:
    """Per head index: [token, sigma or None, mappings, matched relations] of its top tokens."""
    table = results.salient()
    if table is None or table.empty:
        return {}
    table = _in_range(table, results)
    sort_by = [c for c in ("layer", "head", "rank") if c in table.columns]
    table = table.sort_values(sort_by, kind="stable")
    table = table[table.groupby(["layer", "head"]).cumcount() < MAX_SALIENT_TOKENS]
    n = len(table)
    index = _head_index(table, results.n_heads).tolist()
    tokens = table["token"].astype(str).tolist() if "token" in table else [""] * n
    sigmas = table["sigma"].astype(float).tolist() if "sigma" in table else [math.nan] * n
    mappings = table["mappings"].tolist() if "mappings" in table else [None] * n
    # per operation: the relations its own mappings hit (``token_relations``), else the head's
    # summary ("copying:0.87,word_first_letter:0.20", one string) split into items
    if "token_relations" in table:
        matched = table["token_relations"].tolist()
    elif "matched_relations" in table:
        matched = [
            [x for x in m.split(",") if x] if isinstance(m, str) else m
            for m in table["matched_relations"]
        ]
    else:
        matched = [None] * n
    out: dict[str, list[Any]] = {}
    for i, token, sigma, mapped, rels in zip(index, tokens, sigmas, mappings, matched):
        out.setdefault(str(i), []).append(
            [
                token,
                None if math.isnan(sigma) else round(sigma, 3),
                [str(m) for m in _as_list(mapped)[:MAX_MAPPINGS]],
                [str(m) for m in _as_list(rels)],
            ]
        )
    return out


def _as_list(value: Any) -> list[Any]:
    # Parquet list cells come back as numpy arrays; missing ones as None or NaN.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _descriptions_by_head(results: MapResults) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in results.descriptions():
        try:
            layer, head = int(entry["layer"]), int(entry["head"])
        except (KeyError, TypeError, ValueError):
            continue
        if not (0 <= layer < results.n_layers and 0 <= head < results.n_heads):
            continue
        status = str(entry.get("status", "ok"))
        text = str(entry.get("description") or "") if status == "ok" else ""
        out[str(layer * results.n_heads + head)] = [status, text, str(entry.get("pattern") or "")]
    return out


def _number(value: Any) -> float | int | None:
    """A finite number, else None (the summary may hold nulls, NaN or junk)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _correlations(entry: Any) -> dict[str, dict[str, float | int | None]]:
    """{"relation"|"suppression": {r/p without and with context, max static, n prompts}}."""
    if not isinstance(entry, dict):
        return {}
    return {
        kind: {f: _number(entry[kind].get(f)) for f in _CORRELATION_FIELDS}
        for kind in ("relation", "suppression")
        if isinstance(entry.get(kind), dict)
    }


def _validation(results: MapResults) -> dict[str, Any] | None:
    """The per-relation validation summary beside the map, cleaned for the page.

    None when there is no ``validation/summary.json`` or it cannot be read: the page then has
    no validation section. Only known fields are kept, numbers that are not finite become null.
    """
    path = results.directory / VALIDATION_SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("relations"), dict):
        return None
    relations: dict[str, Any] = {}
    for name, entry in summary["relations"].items():
        if not isinstance(entry, dict):
            continue
        causal = entry.get("causal")
        relations[str(name)] = {
            "category": _text(entry.get("category")),
            "correlative": _correlations(entry.get("correlative")),
            "multi_token": _correlations(entry.get("multi_token")),
            "causal": (
                {
                    **{f: _number(causal.get(f)) for f in _CAUSAL_NUMBERS},
                    **{f: _text(causal.get(f)) for f in _CAUSAL_TEXTS},
                }
                if isinstance(causal, dict)
                else None
            ),
        }
    experiments = summary.get("experiments")
    skipped = summary.get("skipped")
    return {
        "experiments": [str(e) for e in experiments] if isinstance(experiments, list) else [],
        "relations": relations,
        "skipped": (
            [[str(k), str(v)] for k, v in skipped.items()] if isinstance(skipped, dict) else []
        ),
    }


def atlas_data(results: MapResults) -> dict[str, Any]:
    """The compact JSON-ready description of one model that the page draws."""
    n_layers, n_heads = results.n_layers, results.n_heads
    n_cells = n_layers * n_heads
    cats_table = _in_range(results.categories, results)
    labels = label_order(set(cats_table["label"].dropna().astype(str)))
    colors = label_colors(labels)
    label_index = {label: i for i, label in enumerate(labels)}

    present = set(results.scores["category"].dropna().astype(str))
    present |= {c for s in cats_table["categories"].fillna("") for c in str(s).split(",") if c}
    categories = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    cat_bit = {c: 1 << i for i, c in enumerate(categories)}

    label = np.full(n_cells, -1, dtype=int)
    cats = np.zeros(n_cells, dtype=int)
    idx = _head_index(cats_table, n_heads).to_numpy()
    label[idx] = cats_table["label"].map(label_index).fillna(-1).to_numpy(dtype=int)
    cats[idx] = [
        sum(cat_bit[c] for c in set(str(s).split(",")) if c in cat_bit)
        for s in cats_table["categories"].fillna("")
    ]

    relations = relation_names(results)
    scores = _in_range(results.scores, results)
    rel_category = scores.drop_duplicates("relation").set_index("relation")["category"]
    score_rows: list[list[int]] = []
    supp_rows: list[list[int]] = []
    cells = {c: np.full((len(relations), n_cells), np.nan) for c in ("score", "suppression_score")}
    for r, relation in enumerate(relations):
        rows = scores[scores["relation"] == relation]
        ridx = _head_index(rows, n_heads).to_numpy()
        for column, sink in (("score", score_rows), ("suppression_score", supp_rows)):
            values = np.full(n_cells, -1, dtype=int)
            values[ridx] = _thousandths(rows[column])
            sink.append(values.tolist())
            cells[column][r, ridx] = rows[column].astype(float).to_numpy()
    threshold = map_threshold(results)

    extras = head_page_data(
        results, scores, relations, cells["score"], cells["suppression_score"], threshold / 1000
    )
    return {
        **extras,  # words, similar, evidence, null, class_level, dynamic (head_pages.py)
        "name": str(results.manifest.get("model", {}).get("name", "")),
        "display_name": results.display_name,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "slug": results.directory.name,
        "threshold": threshold,
        "labels": labels,
        "label_colors": [colors[label] for label in labels],
        "categories": categories,
        "category_colors": [label_colors([*labels, c])[c] for c in categories],
        "relations": relations,
        "relation_categories": [str(rel_category.get(r, "")) for r in relations],
        "label": label.tolist(),
        "cats": cats.tolist(),
        "score": score_rows,
        "supp": supp_rows,
        "salient": _salient_by_head(results),
        "descriptions": _descriptions_by_head(results),
        "skipped": [
            [str(r.get("name")), str(r.get("skipped"))]
            for r in results.manifest.get("relations", [])
            if r.get("skipped")
        ],
        "validation": _validation(results),
        "class_level": class_level_of(results),
    }


def map_threshold(results: MapResults) -> int:
    """The map's threshold in thousandths (the score at which a head implements a relation)."""
    value = results.manifest.get("options", {}).get("threshold", DEFAULT_THRESHOLD)
    try:
        return round(float(value) * 1000)
    except (TypeError, ValueError):
        return round(DEFAULT_THRESHOLD * 1000)


def _score_scale() -> list[str]:
    cmap = score_colormap()
    stops = []
    for x in np.linspace(0, 1, _SCALE_STOPS):
        r, g, b, _ = cmap(float(x))
        stops.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return stops


def _asset(name: str) -> str:
    return resources.files("headatlas.report").joinpath("assets", name).read_text("utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render_atlas_html(results: Sequence[MapResults]) -> str:
    """The atlas page for 1 to 6 models as one self-contained, pure-ASCII HTML string."""
    if not results:
        raise OutputFormatError("no results folder given: pass at least one")
    if len(results) > MAX_MODELS:
        from headatlas.errors import TooManyModelsError

        raise TooManyModelsError(
            f"{len(results)} results folders given, the atlas holds at most {MAX_MODELS}: "
            "write several atlases"
        )
    css, js = _asset("atlas.css"), _asset("atlas.js")
    models = [atlas_data(r) for r in results]
    for m, title in zip(models, panel_titles(results), strict=True):
        m["display_name"] = title  # the recipe joins the name when one model appears twice
    data = {"models": models, "score_scale": _score_scale()}
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(js)}",
            f"style-src {_csp_hash(css)}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    title = "headatlas — " + ", ".join(panel_titles(results))
    return _PAGE.format(
        csp=html.escape(csp, quote=False),  # single quotes stay: the attribute is double-quoted
        title=html.escape(title).encode("ascii", "xmlcharrefreplace").decode("ascii"),
        css=css,
        data=embed_json(data),
        js=js,
        patterns=_pattern_sections(results),
    )


def _pattern_sections(results: Sequence[MapResults]) -> str:
    """The per-layer pattern-share sections of models with descriptions (pure ASCII)."""
    from headatlas.report.pattern_figure import pattern_section_html

    sections = "".join(pattern_section_html(r.directory) for r in results)
    return sections.encode("ascii", "xmlcharrefreplace").decode("ascii")


def write_atlas_html(results: Sequence[MapResults], out: Path) -> Path:
    """Write the atlas page of ``results`` to ``out`` (must end in .html or .htm)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise OutputFormatError(f"cannot write {out}: the atlas is an HTML page, use a .html name")
    write_text_atomic(render_atlas_html(results), out)
    return out
