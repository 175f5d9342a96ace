"""Two maps of one architecture (checkpoints, or the same model under other options), head by
head: which heads gained or lost each relation, and how every score moved."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from headatlas.errors import ResultsError
from headatlas.scoring.categories import DEFAULT_THRESHOLD
from headatlas.store import MapResults

HEAD_COLUMNS = [
    "relation",
    "category",
    "layer",
    "head",
    "score_a",
    "score_b",
    "delta",
    "suppression_a",
    "suppression_b",
    "change",
]
"""Columns of :attr:`MapDiff.heads`; ``change`` is gained, lost, kept or none."""


class IncomparableMapsError(ResultsError):
    """Two maps whose heads do not line up (different layer x head grids)."""


@dataclass
class MapDiff:
    """A (layer, head, relation) table of both scores, and what changed per relation."""

    a: str
    b: str
    threshold: float
    heads: pd.DataFrame
    only_in_a: list[str]
    only_in_b: list[str]

    def summary(self) -> pd.DataFrame:
        """Per relation: heads at or above the threshold in A and in B, gained and lost heads
        (``L3H1`` lists), top score in A and B, and the mean score change."""
        rows = []
        for rel, g in self.heads.groupby("relation", sort=False):
            gained, lost = g[g["change"] == "gained"], g[g["change"] == "lost"]
            rows.append(
                {
                    "relation": rel,
                    "category": g["category"].iloc[0],
                    "heads_a": int((g["score_a"] >= self.threshold).sum()),
                    "heads_b": int((g["score_b"] >= self.threshold).sum()),
                    "n_gained": len(gained),
                    "n_lost": len(lost),
                    "max_a": float(g["score_a"].max()),
                    "max_b": float(g["score_b"].max()),
                    "mean_delta": float(g["delta"].mean()),
                    "gained": " ".join(_head_names(gained)),
                    "lost": " ".join(_head_names(lost)),
                }
            )
        return pd.DataFrame(rows)


def _head_names(df: pd.DataFrame) -> list[str]:
    df = df.sort_values("delta", key=abs, ascending=False)
    return [f"L{int(r.layer)}H{int(r['head'])}" for _, r in df.iterrows()]


def _change(a: float, b: float, threshold: float) -> str:
    if a >= threshold and b >= threshold:
        return "kept"
    if b >= threshold:
        return "gained"
    if a >= threshold:
        return "lost"
    return "none"


def diff_maps(a: MapResults, b: MapResults, threshold: float | None = None) -> MapDiff:
    """Compare map ``b`` against map ``a`` (the earlier checkpoint); a head implements a
    relation at ``threshold`` (default: A's own threshold)."""
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise IncomparableMapsError(
            f"{a.display_name} has {a.n_layers}x{a.n_heads} heads and {b.display_name} "
            f"{b.n_layers}x{b.n_heads}: diff compares maps of one architecture; compare "
            "different models with `headatlas sweep` (cross-model views)"
        )
    if threshold is None:
        threshold = float(a.manifest.get("options", {}).get("threshold", DEFAULT_THRESHOLD))
    cols = ["relation", "category", "layer", "head", "score", "suppression_score"]
    merged = a.scores[cols].merge(
        b.scores[cols], on=["relation", "category", "layer", "head"], suffixes=("_a", "_b")
    )
    rel_a, rel_b = set(a.scores["relation"]), set(b.scores["relation"])
    if merged.empty:
        raise IncomparableMapsError(
            f"{a.display_name} and {b.display_name} share no scored relation: map both with "
            "the same --relations"
        )
    merged = merged.rename(
        columns={"suppression_score_a": "suppression_a", "suppression_score_b": "suppression_b"}
    )
    merged["delta"] = merged["score_b"] - merged["score_a"]
    merged["change"] = [
        _change(x, y, threshold) for x, y in zip(merged["score_a"], merged["score_b"])
    ]
    return MapDiff(
        a=a.display_name,
        b=b.display_name,
        threshold=threshold,
        heads=merged[HEAD_COLUMNS].reset_index(drop=True),
        only_in_a=sorted(rel_a - rel_b),
        only_in_b=sorted(rel_b - rel_a),
    )
