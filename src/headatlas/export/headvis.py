"""A map in HeadVis's static ``data/`` layout (Anthropic's HeadVis, 2026).

The contract is the docstrings of HeadVis's ``data_pipeline.py`` (``write_config``,
``write_scatter_data``, ``write_head_json``, ``compute_top_tokens``,
``compute_qk_distance_histogram``); the README adds that the frontend runs static-only when
``server_config.json`` is missing. Files written::

    data/config.json           model_name, heads [[l, h]...], n_layers, n_heads, n_intervals,
                               metrics, metric_descriptions, head_data_pattern, has_umap,
                               umap_heads, custom_tables, statistics_display
    data/scatter_data.json     [{"layer": l, "head": h, <metric>: float, ...}, ...]
    data/heads/L{l}H{h}.json   sequences, qk_distance_histogram, top_query_tokens,
                               top_key_tokens, histogram, statistics, plus the custom tables

A weights-only map has no sequences, attention patterns, Q/K distances or projection clouds:
those fields are present and empty (``n_intervals`` 0, ``has_umap`` false). What it has goes
where the contract leaves room: each relation's score (and the head's best score and count of
relations) as scatter metrics, and per head the tables ``[{token, weight}]`` the contract
allows for the metrics tab (relation scores, salient tokens, evidence pairs when present),
plus summary ``statistics``. Floats are rounded to 4 decimals, as the contract asks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from headatlas.export.options import prepare_out
from headatlas.export.tables import present_tables
from headatlas.store import load_results

HEAD_PATTERN = "L{layer}H{head}.json"
TABLES_SHOWN = {
    "relation_scores": "Relation scores (MAPS, from the weights)",
    "salient_tokens": "Salient tokens (weight = amplification σ)",
    "salient_mappings": "Salient token → top mappings (weight = σ)",
    "evidence_pairs": "Evidence pairs: source → target ✓/✗ (top tokens), weight = target's rank",
}
STATISTICS = {
    "label": "Label (weights-only map)",
    "n_relations": "Relations implemented",
    "max_score": "Best relation score",
    "best_relation": "Best relation",
    "p_value": "p-value of the best relation against its null (when mapped with one)",
}


def _r(x: Any) -> float:
    """Rounded to 4 decimals through float64 (the contract's float-precision note); NaN -> 0."""
    v = float(x)
    return 0.0 if math.isnan(v) else round(v, 4)


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False))


def export_headvis(directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the map in ``directory`` as HeadVis's ``OUT/data/`` tree; returns ``OUT/data``."""
    results = load_results(directory)
    tables = present_tables(results.directory)
    data = prepare_out(out, overwrite) / "data"
    (data / "heads").mkdir(parents=True, exist_ok=True)
    scores = tables["scores"]
    threshold = float(results.manifest.get("options", {}).get("threshold", 0.15))
    relations = list(dict.fromkeys(scores["relation"]))
    wide = scores.pivot_table(index=["layer", "head"], columns="relation", values="score")
    labels = tables["categories"].set_index(["layer", "head"])
    nulls = (
        scores.pivot_table(index=["layer", "head"], columns="relation", values="p_value")
        if "p_value" in scores.columns
        else None
    )

    heads = [(la, h) for la in range(results.n_layers) for h in range(results.n_heads)]
    scatter = [scatter_row(wide, layer, head, relations, threshold) for layer, head in heads]
    metrics = ["max_score", "n_relations", *relations]
    shown = ["relation_scores"]
    for layer, head in heads:
        payload = head_payload(wide, labels, tables, layer, head, relations, threshold)
        best = payload["statistics"]["best_relation"]
        if nulls is not None and best and (layer, head) in nulls.index:
            payload["statistics"]["p_value"] = _r(nulls.loc[(layer, head), best])
        shown += [k for k in TABLES_SHOWN if payload.get(k) and k not in shown]
        _dump(payload, data / "heads" / HEAD_PATTERN.format(layer=layer, head=head))
    _dump(scatter, data / "scatter_data.json")
    _dump(
        {
            "model_name": results.display_name,
            "heads": [[layer, head] for layer, head in heads],
            "n_layers": results.n_layers,
            "n_heads": results.n_heads,
            "n_intervals": 0,  # no sequences: a weights-only map samples none
            "metrics": metrics,
            "metric_descriptions": metric_descriptions(relations, threshold),
            "head_data_pattern": HEAD_PATTERN,
            "has_umap": False,
            "umap_heads": [],
            "custom_plots": [],
            "custom_tables": [
                {"key": k, "label": TABLES_SHOWN[k]} for k in TABLES_SHOWN if k in shown
            ],
            "statistics_display": {
                k: {"label": v, "format": "default"} for k, v in STATISTICS.items()
            },
        },
        data / "config.json",
    )
    return data


def metric_descriptions(relations: list[str], threshold: float) -> dict[str, str]:
    """Axis tooltips: what each scatter metric is."""
    out = {
        "max_score": "the head's best MAPS relation score (from the weights)",
        "n_relations": f"relations the head implements (score ≥ {threshold})",
    }
    for rel in relations:
        out[rel] = f"MAPS score of '{rel}': share of pairs whose target is in the head's top-k"
    return out


def scatter_row(
    wide: pd.DataFrame, layer: int, head: int, relations: list[str], threshold: float
) -> dict[str, Any]:
    """One flat scatter row: layer, head and every metric."""
    values = wide.loc[(layer, head)] if (layer, head) in wide.index else pd.Series(dtype=float)
    per = {rel: _r(values.get(rel, 0.0)) for rel in relations}
    return {
        "layer": layer,
        "head": head,
        "max_score": max(per.values(), default=0.0),
        "n_relations": sum(v >= threshold for v in per.values()),
        **per,
    }


def head_payload(
    wide: pd.DataFrame,
    labels: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    layer: int,
    head: int,
    relations: list[str],
    threshold: float,
) -> dict[str, Any]:
    """The per-head JSON: the contract's fields (empty where the map has nothing) plus tables."""
    row = scatter_row(wide, layer, head, relations, threshold)
    per = sorted(((row[r], r) for r in relations), reverse=True)
    label = str(labels.loc[(layer, head), "label"]) if (layer, head) in labels.index else ""
    payload: dict[str, Any] = {
        "sequences": [],
        "qk_distance_histogram": {"bin_edges": [], "bin_values": []},
        "top_query_tokens": [],
        "top_key_tokens": [],
        "histogram": {},
        "statistics": {
            "label": label,
            "n_relations": row["n_relations"],
            "max_score": row["max_score"],
            "best_relation": per[0][1] if per and per[0][0] > 0 else "",
        },
        "relation_scores": [{"token": r, "weight": s} for s, r in per],
    }
    salient = tables.get("salient")
    if salient is not None:
        mine = salient[(salient["layer"] == layer) & (salient["head"] == head)]
        if "rank" in mine.columns:
            mine = mine.sort_values("rank")
        payload["salient_tokens"] = [
            {"token": str(t), "weight": _r(s)} for t, s in zip(mine["token"], mine["sigma"])
        ]
        if "mappings" in mine.columns:
            payload["salient_mappings"] = [
                {"token": f"{t} → {', '.join(str(x) for x in m)}", "weight": _r(s)}
                for t, m, s in zip(mine["token"], mine["mappings"], mine["sigma"])
            ]
    evidence = tables.get("evidence")
    if evidence is not None:
        mine = evidence[(evidence["layer"] == layer) & (evidence["head"] == head)]
        rank = mine["target_rank"] if "target_rank" in mine.columns else pd.Series(0, mine.index)
        ok = mine["correct"] if "correct" in mine.columns else pd.Series(None, mine.index)
        top = mine["top_tokens"] if "top_tokens" in mine.columns else pd.Series(None, mine.index)
        payload["evidence_pairs"] = [
            {
                "token": f"{rel}: {src} → {tgt} {'✓' if c is True or c == 1 else '✗'}"
                + (f" (top: {', '.join(str(t) for t in tt)})" if tt is not None else ""),
                "weight": _r(rk),
            }
            for rel, src, tgt, c, rk, tt in zip(
                mine["relation"], mine["source"], mine["target"], ok, rank, top
            )
        ]
    return payload
