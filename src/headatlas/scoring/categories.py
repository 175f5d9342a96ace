"""Head labels from relation scores: a category, "N categories", or "Unclassified"."""

from __future__ import annotations

import pandas as pd

CATEGORIES: tuple[str, ...] = ("Algorithmic", "Knowledge", "Linguistic", "Translation")
"""The four built-in relation categories, in display order."""

UNCLASSIFIED = "Unclassified"

LABELS: tuple[str, ...] = (
    UNCLASSIFIED,
    *CATEGORIES,
    "2 categories",
    "3 categories",
    "4 categories",
)
"""Every head label, in legend order."""

DEFAULT_THRESHOLD = 0.15

LABEL_RULES: tuple[str, ...] = ("null", "p-value", "paper")
"""When a score counts: ``null`` (score ≥ threshold and above every shuffled-target score,
``null_max``), ``p-value`` (score ≥ threshold and empirical p ≤ alpha) or ``paper`` (score ≥
threshold, the MAPS rule)."""


def label_for(categories: set[str]) -> str:
    """The label of a head implementing relations of the given categories."""
    if not categories:
        return UNCLASSIFIED
    if len(categories) == 1:
        return next(iter(categories))
    return f"{min(len(categories), 4)} categories"


def categorize_heads(
    scores: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    use_suppression: bool = False,
    rule: str = "null",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Label every head of a scores table.

    ``scores`` has columns layer, head, relation, category, score, suppression_score. A head
    implements a relation when its score (or, with ``use_suppression``, its suppression score)
    is at least ``threshold``; under ``rule`` "null" the score must also exceed the null's
    ``null_max``, under "p-value" its ``p_value`` must be at most ``alpha`` (both read from
    :mod:`headatlas.scoring.null`'s columns; a table without them, or "paper", uses the
    threshold alone). Suppression scores have no null. Returns one row per head: layer, head, label, categories
    (comma-separated, in CATEGORIES order, custom categories after), n_relations, relations.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"label rule {rule!r} is unknown: use one of {', '.join(LABEL_RULES)}")
    scores = scores.assign(_hit=scores["score"] >= threshold)
    if rule == "null" and "null_max" in scores.columns:
        scores["_hit"] &= ~(scores["null_max"] >= scores["score"])  # NaN: no null, counts
    elif rule == "p-value" and "p_value" in scores.columns:
        scores["_hit"] &= ~(scores["p_value"] > alpha)
    rows = []
    for (layer, head), group in scores.groupby(["layer", "head"], sort=True):
        hit = group["_hit"]
        if use_suppression:
            hit = hit | (group["suppression_score"] >= threshold)
        implemented = group[hit]
        cats = set(implemented["category"])
        ordered = [c for c in CATEGORIES if c in cats] + sorted(cats - set(CATEGORIES))
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "label": label_for(cats),
                "categories": ",".join(ordered),
                "n_relations": len(implemented),
                "relations": ",".join(implemented["relation"]),
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "head", "label", "categories", "n_relations", "relations"]
    )
