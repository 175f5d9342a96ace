"""Figures of the validation experiments: static vs dynamic scatter (``validate``), accuracy
curves under ablation (``validate``'s causal run), mean r per recipe (``calibrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from headatlas.validate.calibrate import CalibrationResults


def _pyplot() -> Any:
    """pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def correlation_scatter(heads: pd.DataFrame, path: str | Path, title: str) -> None:
    """Static vs dynamic relation scores, one point per head x template x relation; one panel
    without and one with context."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    relations = sorted(heads["relation"].unique()) if len(heads) else []
    cmap = plt.get_cmap("tab20")
    for ax, col, name in zip(
        axes,
        ("dynamic_without_context", "dynamic_with_context"),
        ("without context", "with context"),
        strict=True,
    ):
        for i, rel in enumerate(relations):
            sub = heads[heads["relation"] == rel]
            ax.scatter(sub["static_score"], sub[col], s=6, alpha=0.5, color=cmap(i % 20), label=rel)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        ax.set_title(f"dynamic score {name}")
        ax.set_xlabel("static score (weights only)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("dynamic score (inference)")
    if relations:
        axes[1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_curves(curves: pd.DataFrame, path: str | Path, title: str) -> None:
    """One small panel per relation: accuracy vs heads ablated (relation heads, random heads
    mean ± sd, control relations at m)."""
    plt = _pyplot()
    relations = list(dict.fromkeys(curves["relation"])) if len(curves) else []
    n = max(1, len(relations))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(relations) :]:
        ax.axis("off")
    for ax, rel in zip(axes.ravel(), relations, strict=False):
        sub = curves[curves["relation"] == rel]
        own = sub[sub["condition"] == "relation"]
        ax.plot(own["n_ablated"], own["accuracy"], "o-", color="C3", ms=3, label="relation heads")
        rnd = sub[sub["condition"] == "random"].groupby("n_ablated")["accuracy"]
        if len(rnd):
            mean, sd = rnd.mean(), rnd.std(ddof=0)
            ax.plot(mean.index, mean.values, "s--", color="0.4", ms=3, label="random heads")
            ax.fill_between(mean.index, mean - sd, mean + sd, color="0.7", alpha=0.4, lw=0)
        ctrl = sub[sub["condition"] == "control"]
        for i, (cname, c) in enumerate(ctrl.groupby("control_relation")):
            ax.plot(c["n_ablated"], c["accuracy"], ":", marker="x", color=f"C{i % 3}", ms=4,
                    label=f"control: {cname}")  # fmt: skip
        ax.set_title(rel, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("heads ablated", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipes_figure(res: CalibrationResults, path: str | Path, title: str) -> None:
    """``calibrate``: mean r per recipe, without and with context, with 95% bootstrap
    intervals; the winner starred."""
    plt = _pyplot()
    t = res.table
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(t) + 2), 3.8))
    for i, (ctx, name) in enumerate(
        (("without_context", "without context"), ("with_context", "with context"))
    ):
        m = t[f"relation_{ctx}_mean_r"].to_numpy(float)
        lo = m - t[f"relation_{ctx}_ci_low"].to_numpy(float)
        hi = t[f"relation_{ctx}_ci_high"].to_numpy(float) - m
        ax.bar(x + (i - 0.5) * 0.38, m, 0.38, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(x, [f"{r}{' *' if r == res.winner else ''}" for r in t["recipe"]])
    ax.set_ylabel("mean r (static vs dynamic)")
    ax.set_ylim(min(0.0, float(np.nanmin(t["relation_without_context_mean_r"])) - 0.05), 1.0)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{title}  (* = chosen)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
