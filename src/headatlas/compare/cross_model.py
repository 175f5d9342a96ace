"""Many maps side by side, from a sweep's combined tables (``OUT/sweep/scores.parquet`` and
``categories.parquet``; one ``entry`` per map): relation x model, category share by relative
depth (the paper's universality question), and scores across training checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headatlas.scoring.categories import CATEGORIES, DEFAULT_THRESHOLD


def entry_order(df: pd.DataFrame) -> list[str]:
    """Entries in the order the sweep listed them."""
    return list(dict.fromkeys(df["entry"]))


def relation_by_model(
    scores: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two relation x entry tables: the best head's score, and how many heads reach
    ``threshold`` (NaN where a map did not score the relation)."""
    order = entry_order(scores)
    relations = list(dict.fromkeys(scores["relation"]))
    g = scores.groupby(["relation", "entry"])["score"]
    best = g.max().unstack().reindex(index=relations, columns=order)
    count = g.apply(lambda s: int((s >= threshold).sum())).unstack()
    return best, count.reindex(index=relations, columns=order)


def depth_profile(categories: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    """Share of heads implementing each category, per relative-depth bin, per entry.

    Relative depth is layer / (n_layers - 1), 0 at the first layer and 1 at the last, so
    models of any depth share one axis. Returns entry, category, bin (0..bins-1), depth (bin
    centre) and share (0..1); a head of several categories counts for each.
    """
    df = categories.copy()
    df["bin"] = np.minimum((df["relative_depth"] * bins).astype(int), bins - 1)
    cats = [c for c in CATEGORIES if df["categories"].str.contains(c, regex=False).any()]
    extra = sorted({c for s in df["categories"] for c in str(s).split(",") if c} - set(CATEGORIES))
    rows = []
    for (entry, b), g in df.groupby(["entry", "bin"], sort=False):
        held = g["categories"].fillna("").str.split(",")
        for cat in [*cats, *extra]:
            share = float(held.apply(lambda cs, c=cat: c in cs).mean())
            rows.append({"entry": entry, "category": cat, "bin": int(b), "share": share})
    out = pd.DataFrame(rows, columns=["entry", "category", "bin", "share"])
    out["depth"] = (out["bin"] + 0.5) / bins
    rank = {e: i for i, e in enumerate(entry_order(df))}
    out["_order"] = out["entry"].map(rank)
    out = out.sort_values(["_order", "category", "bin"], kind="stable").drop(columns="_order")
    return out.reset_index(drop=True)


def base_model(scores: pd.DataFrame) -> pd.Series:
    """The model an entry is a checkpoint of (the entry without its ``@revision``)."""
    rev = scores["revision"].fillna("")
    return pd.Series(
        [e[: -len(r) - 1] if r else e for e, r in zip(scores["entry"], rev)], index=scores.index
    )


def checkpoint_evolution(scores: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    """Per model with at least two checkpoints at known training steps (revisions named
    ``step<N>``): the mean score of each relation's ``top`` best heads at every step.
    Returns model, step, relation, category, score; empty when no model has two steps."""
    df = scores[scores["step"].notna()].copy()
    if df.empty:
        return pd.DataFrame(columns=["model", "step", "relation", "category", "score"])
    df["model"] = base_model(df)
    df["step"] = df["step"].astype(int)
    steps = df.groupby("model")["step"].nunique()
    df = df[df["model"].isin(steps[steps >= 2].index)]
    top_mean = (
        df.groupby(["model", "step", "relation", "category"], sort=False)["score"]
        .apply(lambda s: float(s.nlargest(top).mean()))
        .reset_index()
    )
    return top_mean.sort_values(["model", "step"], kind="stable").reset_index(drop=True)
