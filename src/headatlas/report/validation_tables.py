"""Markdown tables of the validation experiments (``validate``'s correlative, multi-token,
causal and QK tables; ``calibrate``'s recipe table), from the tables they return."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from headatlas.validate.calibrate import CalibrationResults
    from headatlas.validate.qk import QKValidation


def correlation_markdown(table: pd.DataFrame, title: str) -> str:
    """The correlation table (:data:`headatlas.stats.CORRELATION_COLUMNS`) as Markdown
    (relation scores first, then suppression)."""
    lines = [
        f"# {title}",
        "",
        "Pearson r between static (weights-only) and dynamic (inference) scores over all "
        "heads x templates; p two-sided.",
        "",
        "| relation | category | score | r without context | p | r with context | p "
        "| max static | max dyn. w/o ctx | max dyn. w/ ctx | prompts |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.sort_values(["score", "relation"]).itertuples():
        lines.append(
            f"| {row.relation} | {row.category} | {row.score} | {_r(row.r_without_context)} | "
            f"{_p(row.p_without_context)} | {_r(row.r_with_context)} | {_p(row.p_with_context)} "
            f"| {row.max_static_score:.2f} | {row.max_dynamic_without_context:.2f} | "
            f"{row.max_dynamic_with_context:.2f} | {row.n_prompts} |"
        )
    for kind in ("relation", "suppression"):
        sub = table[table["score"] == kind]
        if len(sub):
            lines.append("")
            lines.append(
                f"Mean r ({kind} scores, {len(sub)} relations): without context "
                f"{_r(sub['r_without_context'].mean())}, with context "
                f"{_r(sub['r_with_context'].mean())}."
            )
    return "\n".join(lines) + "\n"


def calibration_markdown(res: CalibrationResults, title: str) -> str:
    """``calibrate``'s per-recipe table (and per-template means) as Markdown."""
    t = res.table
    lines = [
        f"# {title}",
        "",
        "Mean Pearson r between static and dynamic scores over relations (r per relation over "
        "heads x templates); [95% bootstrap interval over heads]. Winner: "
        f"**{res.winner}**.",
        "",
        "| recipe | switches | r w/o context | r with context | suppression r w/o | "
        "suppression r with | heads >= 0.15 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in t.itertuples():
        cells = []
        for key in (
            "relation_without_context",
            "relation_with_context",
            "suppression_without_context",
            "suppression_with_context",
        ):
            m, lo, hi = (getattr(row, f"{key}_{s}") for s in ("mean_r", "ci_low", "ci_high"))
            cells.append(f"{_r(m)} [{_r(lo)}, {_r(hi)}]")
        lines.append(
            f"| {row.recipe} | {row.label} | {' | '.join(cells)} | {row.heads_at_threshold} |"
        )
    n = int(t["relation_without_context_n_relations"].max()) if len(t) else 0
    lines += [
        "",
        f"Relations with a non-constant dynamic score: {n}.",
        "",
        "Per template (relation scores):",
        "",
    ]
    lines += ["| recipe | template | r w/o context | r with context |", "|---|---|---:|---:|"]
    pt = res.per_template
    if len(pt):
        wide = pt.pivot_table(index=["recipe", "template"], columns="context", values="mean_r")
        for (recipe, tpl), vals in wide.iterrows():
            lines.append(
                f"| {recipe} | {tpl} | {_r(vals.get('without_context', np.nan))} | "
                f"{_r(vals.get('with_context', np.nan))} |"
            )
    return "\n".join(lines) + "\n"


def causal_markdown(table: pd.DataFrame, title: str) -> str:
    """The causal summary (:func:`headatlas.stats.causal_summary`) as Markdown."""
    lines = [
        f"# {title}",
        "",
        "Accuracy of the next token (= target's first token) on few-shot prompts, before and "
        "after zeroing at the last position the m heads with the highest static score, m "
        "random other heads (mean ± sd over draws), and the relation's heads on control "
        "relations (top-head overlap < 15%, base accuracy within 0.2).",
        "",
        "| relation | m | base acc | acc, relation heads | acc, random heads | controls "
        "| control acc drop |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in table.itertuples():
        if r.skipped:
            lines.append(f"| {r.relation} | – | {r.base_accuracy:.2f} | skipped: {r.skipped} "
                         "| | | |")  # fmt: skip
            continue
        ctrl = r.controls.replace(";", ", ") if r.controls else "none found"
        drop = _num(r.control_drop_mean)
        lines.append(
            f"| {r.relation} | {r.m} | {r.base_accuracy:.2f} | {r.accuracy_relation_heads:.2f} "
            f"| {r.accuracy_random_mean:.2f} ± {r.accuracy_random_sd:.2f} | {ctrl} | {drop} |"
        )
    done = table[table["skipped"] == ""]
    if len(done):
        lines += [
            "",
            f"Mean accuracy drop over {len(done)} relations: relation heads "
            f"{done['drop_relation_heads'].mean():.2f}, random heads "
            f"{done['drop_random_mean'].mean():.2f}, controls "
            f"{_num(done['control_drop_mean'].mean())}.",
        ]
    return "\n".join(lines) + "\n"


def qk_markdown(v: QKValidation, title: str) -> str:
    """The QK correlation table as Markdown, with the target verdicts."""
    from headatlas.scoring.qk_labels import CLASS_TARGET, DUPLICATE_TARGET

    lines = [f"### {title}", "",
             "| inputs | rotary | score | r | 95% interval | heads |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in v.correlations.to_dict("records"):
        lines.append(f"| {row['inputs']} | {row['rotary']} | {row['score']} | {row['r']:.3f} | "
                     f"{row['low']:.2f} – {row['high']:.2f} | {row['n_heads']} |")  # fmt: skip
    b = v.best
    verdict = (
        f"reaches the r >= {DUPLICATE_TARGET} target"
        if b["reaches_target"]
        else f"is below the r >= {DUPLICATE_TARGET} target: heads are not labelled by it"
    )
    lines += ["", f"Best reading: {b['inputs']} inputs, rotary {b['rotary']}, {b['score']} "
              f"(r = {b['r']:.3f}) {verdict}."]  # fmt: skip
    if v.classes is not None and len(v.classes):
        lines += ["", "Key preference per token class (AUC against random keys):", "",
                  "| class | tokens | r | 95% interval | static mean | null mean | heads p<=0.05 "
                  "| dynamic mean |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in v.classes.to_dict("records"):
            lines.append(f"| {row['class']} | {row['n_tokens']} | {row['r']:.3f} | "
                         f"{row['low']:.2f} – {row['high']:.2f} | {row['static_mean']:.3f} | "
                         f"{row['null_mean']:.3f} | {row['heads_p05']} | "
                         f"{row['dynamic_mean']:.3f} |")  # fmt: skip
        mean_r = float(v.classes["r"].mean())
        verdict = (
            f"reaches the mean r >= {CLASS_TARGET} target"
            if mean_r >= CLASS_TARGET
            else f"is below the mean r >= {CLASS_TARGET} target: heads are not labelled by it"
        )
        lines += ["", f"Mean r over classes {mean_r:.3f} {verdict}."]
    return "\n".join(lines) + "\n"


def _r(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.1e}"


def _num(x: float) -> str:
    return "–" if x != x else f"{x:.2f}"
