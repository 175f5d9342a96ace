"""Statistics of the validation experiments: Pearson correlations (with p-values, row-batched,
with bootstrap intervals over heads) and the summary tables built from them.

Only numbers in, numbers out (numpy and pandas; no model, no torch): ``validate`` runs the
model and hands its scores here; ``report`` formats what comes back. Three Pearson functions
are kept apart on purpose: each is the exact arithmetic of a table the project has published
(the CSVs are hashed), and they differ in how a constant side is treated:

- :func:`pearson_p` (scipy, with p): NaN when either side is constant or n < 3;
- :func:`pearson` (``np.corrcoef``): NaN when either side is constant;
- :func:`pearson_rows` (many pairs at once): 0 where x is constant, NaN where y is.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from headatlas.validate.causal import CausalResult
    from headatlas.validate.dynamic import DynamicScores

CONTEXTS = ("without_context", "with_context")
"""The two dynamic variants: the head's value at the source alone, and what it really read."""


def pearson_p(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and two-sided p; NaN when either side is constant (or fewer than 3 points)."""
    from scipy.stats import pearsonr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x, y [B, n]; 0 where x is constant (a static map that
    scores every head alike carries no signal), NaN where y is."""
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    sx = np.sqrt((xc * xc).sum(1))
    sy = np.sqrt((yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / (sx * sy)
    r = np.where(sx == 0, 0.0, r)
    return np.where(sy == 0, np.nan, r)


def bootstrap_draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resamples (with replacement) of ``n`` items, seeded: indices [n_boot, n]."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(draws: np.ndarray, percent: float = 95.0) -> tuple[float, float]:
    """The central ``percent``% percentile interval of bootstrap draws (non-finite draws left
    out); NaN when none is finite."""
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (100.0 - percent) / 2
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Correlation:
    """Pearson r over heads with a bootstrap interval (heads resampled)."""

    r: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for summaries."""
        return {"r": self.r, "low": self.low, "high": self.high, "n": self.n}


def pearson_with_interval(
    static: Sequence[float] | np.ndarray,
    dynamic: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> Correlation:
    """Pearson r between two per-head scores and its 95% bootstrap interval."""
    a = np.asarray(static, dtype=np.float64).ravel()
    b = np.asarray(dynamic, dtype=np.float64).ravel()
    idx = bootstrap_draws(len(a), n_boot, seed)
    low, high = interval(np.array([pearson(a[i], b[i]) for i in idx]))
    return Correlation(pearson(a, b), low, high, len(a))


def static_matrix(scores: pd.DataFrame, relation: str, n_layers: int, n_heads: int) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """A relation's static (score, suppression_score) from a scores table as [n_layers,
    n_heads] arrays (0 for heads the table lacks)."""
    sub = scores[scores["relation"] == relation]
    out = np.zeros((2, n_layers, n_heads))
    layers, heads = sub["layer"].to_numpy(int), sub["head"].to_numpy(int)
    out[0, layers, heads] = sub["score"].to_numpy(float)
    out[1, layers, heads] = sub["suppression_score"].to_numpy(float)
    return out[0], out[1]


CORRELATION_COLUMNS = [
    "relation",
    "category",
    "score",
    "r_without_context",
    "p_without_context",
    "r_with_context",
    "p_with_context",
    "max_static_score",
    "max_dynamic_without_context",
    "max_dynamic_with_context",
    "n_heads",
    "n_templates",
    "n_prompts",
    "k",
]
"""Columns of ``validate``'s correlative table (one row per relation x score kind)."""


def correlate(
    relation: str,
    category: str,
    k: int,
    static: np.ndarray,
    static_suppression: np.ndarray,
    per_template: Sequence[DynamicScores],
) -> list[dict[str, Any]]:
    """Pearson r (and p) between static and dynamic scores over all heads x templates: one
    row for relation scores, one for suppression scores (columns :data:`CORRELATION_COLUMNS`).
    """
    rows = []
    for kind, stat, suffix in (
        ("relation", static, ""),
        ("suppression", static_suppression, "_suppression"),
    ):
        x = np.concatenate([stat.ravel() for _ in per_template])
        row: dict[str, Any] = {"relation": relation, "category": category, "score": kind}
        for ctx in CONTEXTS:
            y = np.concatenate([getattr(d, ctx + suffix).ravel() for d in per_template])
            row[f"r_{ctx}"], row[f"p_{ctx}"] = pearson_p(x, y)
            row[f"max_dynamic_{ctx}"] = float(y.max()) if len(y) else float("nan")
        row.update(
            max_static_score=float(stat.max()),
            n_heads=int(stat.size),
            n_templates=len(per_template),
            n_prompts=int(sum(d.n_prompts for d in per_template)),
            k=k,
        )
        rows.append(row)
    return [{c: r[c] for c in CORRELATION_COLUMNS} for r in rows]


HEADS_THRESHOLD = 0.15
"""Static score at which ``compare_recipes`` counts a head (the map's default threshold)."""


def compare_recipes(
    maps: Mapping[str, pd.DataFrame],
    dyn: Sequence[DynamicScores],
    n_layers: int,
    n_heads: int,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``calibrate``'s tables from static scores per recipe and the dynamic scores: (table per
    recipe, table per recipe x template, table per recipe x relation).

    Per relation, r is Pearson's over heads x templates (as ``validate`` computes it); a
    relation whose dynamic scores are constant (no head ever promotes the target) is left out
    of every recipe's mean; a recipe whose static scores are constant gets r = 0 there. The
    95% interval resamples heads (the same draw for every relation and template).
    """
    boot = bootstrap_draws(n_layers * n_heads, n_boot, seed)
    by_rel: dict[str, list[DynamicScores]] = {}
    for d in dyn:
        by_rel.setdefault(d.relation, []).append(d)
    templates = list(dict.fromkeys(d.template for d in dyn))
    rows, tpl_rows, rel_rows = [], [], []
    for name, scores in maps.items():
        row: dict[str, Any] = {"recipe": name}
        for kind, suffix in (("relation", ""), ("suppression", "_suppression")):
            for ctx in CONTEXTS:
                key = f"{kind}_{ctx}"
                rs, bs = [], []
                per_tpl: dict[str, list[float]] = {t: [] for t in templates}
                for rel, ds in by_rel.items():
                    static, static_sup = static_matrix(scores, rel, n_layers, n_heads)
                    x = (static if kind == "relation" else static_sup).ravel()
                    ys = np.stack([getattr(d, ctx + suffix).ravel() for d in ds])  # [T, N]
                    r = pearson_rows(np.tile(x, len(ds))[None], ys.reshape(1, -1))[0]
                    if np.isnan(r):
                        continue
                    rs.append(r)
                    xb = x[boot]  # [B, N]
                    yb = ys[:, boot].transpose(1, 0, 2).reshape(n_boot, -1)  # [B, T·N]
                    bs.append(pearson_rows(np.tile(xb, len(ds)), yb))
                    for d, y in zip(ds, ys, strict=True):
                        rt = pearson_rows(x[None], y[None])[0]
                        if not np.isnan(rt):
                            per_tpl[d.template].append(rt)
                    if kind == "relation":
                        rel_rows.append({"recipe": name, "relation": rel, "context": ctx, "r": r})
                row[f"{key}_mean_r"] = float(np.mean(rs)) if rs else float("nan")
                row[f"{key}_n_relations"] = len(rs)
                lo = hi = float("nan")
                if bs:
                    with warnings.catch_warnings():  # a draw may leave a relation constant
                        warnings.simplefilter("ignore", RuntimeWarning)
                        lo, hi = interval(np.nanmean(np.stack(bs), 0))  # mean r per draw [B]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = lo, hi
                if kind == "relation":
                    tpl_rows += [
                        {
                            "recipe": name,
                            "template": t,
                            "context": ctx,
                            "mean_r": float(np.mean(vals)) if vals else float("nan"),
                            "n_relations": len(vals),
                        }
                        for t, vals in per_tpl.items()
                    ]
        static_best = scores.groupby(["layer", "head"])["score"].max()
        row["heads_at_threshold"] = int((static_best >= HEADS_THRESHOLD).sum())
        row["score"] = np.nanmean(
            [row["relation_without_context_mean_r"], row["relation_with_context_mean_r"]]
        )
        rows.append(row)
    per_rel = pd.DataFrame(rel_rows)
    if len(per_rel):
        per_rel = per_rel.pivot_table(
            index=["recipe", "relation"], columns="context", values="r"
        ).reset_index()
        per_rel.columns.name = None
    return pd.DataFrame(rows), pd.DataFrame(tpl_rows), per_rel


CAUSAL_COLUMNS = [
    "relation",
    "category",
    "n_prompts",
    "m",
    "base_accuracy",
    "accuracy_relation_heads",
    "accuracy_random_mean",
    "accuracy_random_sd",
    "drop_relation_heads",
    "drop_random_mean",
    "controls",
    "control_base_accuracy",
    "control_accuracy_after",
    "control_drop_mean",
    "skipped",
]
"""Columns of ``validate``'s causal table (one row per relation)."""


def causal_summary(results: Sequence[CausalResult]) -> pd.DataFrame:
    """One row per relation: accuracy at m ablated heads (relation, random mean and sd over
    draws, controls before and after) and the drops from the base accuracy."""
    rows = []
    for r in results:
        row: dict[str, Any] = {c: np.nan for c in CAUSAL_COLUMNS}
        row.update(
            relation=r.relation,
            category=r.category,
            n_prompts=r.n_prompts,
            m=len(r.heads),
            base_accuracy=r.base_accuracy,
            controls="",
            skipped=r.skipped or "",
        )
        if not r.skipped:
            final_random = [c[-1] for c in r.random_curves]
            row.update(
                accuracy_relation_heads=r.relation_curve[-1],
                accuracy_random_mean=float(np.mean(final_random)) if final_random else np.nan,
                accuracy_random_sd=float(np.std(final_random)) if final_random else np.nan,
            )
            row["drop_relation_heads"] = r.base_accuracy - row["accuracy_relation_heads"]
            row["drop_random_mean"] = r.base_accuracy - row["accuracy_random_mean"]
            if r.controls:
                base = [b for b, _ in r.controls.values()]
                after = [a for _, a in r.controls.values()]
                row.update(
                    controls=";".join(r.controls),
                    control_base_accuracy=float(np.mean(base)),
                    control_accuracy_after=float(np.mean(after)),
                    control_drop_mean=float(np.mean(base) - np.mean(after)),
                )
        rows.append(row)
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS)
