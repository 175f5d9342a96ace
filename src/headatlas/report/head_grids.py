"""Layer × head arrays drawn by the figures, built from a model's results tables.

Every grid has shape ``(n_heads, n_layers)`` — row = head, column = layer — so that it draws with
layers along x and heads along y. Heads absent from the tables are NaN (drawn as missing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from headatlas.errors import UnknownRelationError
from headatlas.scoring.categories import CATEGORIES
from headatlas.store import MapResults


def _empty(results: MapResults) -> np.ndarray:
    return np.full((results.n_heads, results.n_layers), np.nan)


def _in_range(df: pd.DataFrame, results: MapResults) -> pd.DataFrame:
    # A table written for a different shape than the manifest would index out of the grid.
    ok = (df["layer"].between(0, results.n_layers - 1)) & (
        df["head"].between(0, results.n_heads - 1)
    )
    return df[ok]


def label_grid(results: MapResults, labels: list[str]) -> np.ndarray:
    """Index into ``labels`` of every head's label; ``(n_heads, n_layers)``, NaN where absent."""
    grid = _empty(results)
    cats = _in_range(results.categories, results)
    index = {label: i for i, label in enumerate(labels)}
    values = cats["label"].map(index).to_numpy(dtype=float)
    grid[cats["head"].to_numpy(dtype=int), cats["layer"].to_numpy(dtype=int)] = values
    return grid


def category_grid(results: MapResults, category: str) -> np.ndarray:
    """1 where a head implements a relation of ``category``, else 0; NaN where absent."""
    grid = _empty(results)
    cats = _in_range(results.categories, results)
    member = cats["categories"].fillna("").map(lambda s: category in s.split(","))
    grid[cats["head"].to_numpy(dtype=int), cats["layer"].to_numpy(dtype=int)] = member.to_numpy(
        dtype=float
    )
    return grid


def relation_names(results: MapResults) -> list[str]:
    """Relations that have scores, ordered by category (built-in order first), then name."""
    pairs = results.scores[["relation", "category"]].drop_duplicates("relation")
    order = {c: i for i, c in enumerate(CATEGORIES)}
    ranked = sorted(
        zip(pairs["relation"], pairs["category"]),
        key=lambda rc: (order.get(rc[1], len(order)), str(rc[1]), str(rc[0])),
    )
    return [str(r) for r, _ in ranked]


def scored_categories(results: MapResults) -> list[str]:
    """Categories that have at least one scored relation, built-in order first."""
    present = set(results.scores["category"].dropna().astype(str))
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def require_relation(results: MapResults, relation: str) -> None:
    """Raise UnknownRelationError listing the available relations if ``relation`` has no scores."""
    available = relation_names(results)
    if relation not in available:
        skipped = [
            r["name"]
            for r in results.manifest.get("relations", [])
            if r.get("skipped") and r.get("name") == relation
        ]
        why = " (it was skipped when mapping)" if skipped else ""
        raise UnknownRelationError(
            f"relation {relation!r} has no scores in {results.directory}{why}; "
            f"available: {', '.join(available) or 'none'}"
        )


def relation_grid(results: MapResults, relation: str, column: str = "score") -> np.ndarray:
    """``column`` (score or suppression_score) of every head on ``relation``; NaN where absent."""
    require_relation(results, relation)
    grid = _empty(results)
    rows = _in_range(results.scores[results.scores["relation"] == relation], results)
    grid[rows["head"].to_numpy(dtype=int), rows["layer"].to_numpy(dtype=int)] = rows[
        column
    ].to_numpy(dtype=float)
    return grid
