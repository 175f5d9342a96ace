"""What the atlas shows on a pinned head beyond its scores: evidence, null, dynamic scores,
the heads most alike and one line in words.

Each part is read from the results folder when it is there and left out (null / empty) when it
is not, so an older map still gives a page:

- ``evidence.parquet`` (beside ``scores.parquet``): per (layer, head, relation, kind) pairs with
  the head's top tokens, ``correct`` and the target's 1-based ``target_rank``;
- ``null_mean``, ``null_max``, ``p_value``, ``z`` columns of ``scores.parquet``: the scores under
  target permutations; ``relations_class_level`` in the manifest flags relations whose null is
  high;
- ``validation/correlative_heads.csv`` (``headatlas validate``): dynamic scores per head ×
  template × relation, averaged over templates here.

Numbers travel as integers (thousandths; p in ten-thousandths; z in hundredths; −1 or null
for none) to keep an 80 × 64 × 20 page small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headatlas.report.head_qk import qk_data
from headatlas.report.head_words import EvidencePair, RelationReading, head_line
from headatlas.report.ov_affinity import alike_by_head
from headatlas.scoring.null import NULL_COLUMNS
from headatlas.store import MapResults

DYNAMIC_HEADS = Path("validation") / "correlative_heads.csv"
"""Per-head dynamic scores written by ``headatlas validate``."""

MAX_PAIRS_PER_RELATION = 5
"""Evidence pairs kept per (head, relation, kind) in the page: right ones, then wrong ones."""

MAX_WRONG_PER_RELATION = 2
"""Of those, at most this many that the head gets wrong."""

MAX_TOP_TOKENS = 3
"""Predicted tokens shown per evidence pair."""

MAX_SIMILAR = 5
"""Most alike heads listed per head."""

KINDS = ("relation", "suppression")


def evidence_table(results: MapResults) -> pd.DataFrame | None:
    """The map's evidence pairs, or None when the map has none (maps before evidence)."""
    return results.evidence


def _as_strings(value: Any, limit: int) -> list[str]:
    # Parquet list cells come back as numpy arrays; missing ones as None or NaN.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value[:limit]]


def _kept_evidence(table: pd.DataFrame, results: MapResults) -> pd.DataFrame:
    """Rows in range, bounded per (head, relation, kind): up to ``MAX_WRONG_PER_RELATION``
    wrong pairs and right ones filling the rest, right ones first, each in the stored order."""
    ok = table["layer"].between(0, results.n_layers - 1) & table["head"].between(
        0, results.n_heads - 1
    )
    table = table[ok & table["kind"].isin(KINDS)].copy()
    table["_wrong"] = ~table["correct"].astype(bool)
    keys = ["layer", "head", "relation", "kind"]
    table = table.sort_values([*keys, "_wrong"], kind="stable")
    n_in_group = table.groupby([*keys, "_wrong"]).cumcount().to_numpy()
    n_wrong = table.groupby(keys)["_wrong"].transform("sum").clip(upper=MAX_WRONG_PER_RELATION)
    cap = np.where(table["_wrong"], MAX_WRONG_PER_RELATION, MAX_PAIRS_PER_RELATION - n_wrong)
    return table[n_in_group < cap].drop(columns="_wrong")


def evidence_by_head(
    table: pd.DataFrame | None, results: MapResults, relations: Sequence[str]
) -> dict[str, list[list[Any]]]:
    """Per head index: [relation index, kind (0 relation, 1 suppression), source, target,
    correct (0/1), target rank, top tokens] per kept pair."""
    if table is None or table.empty:
        return {}
    rindex = {r: k for k, r in enumerate(relations)}
    table = _kept_evidence(table[table["relation"].astype(str).isin(rindex)], results)
    cols = _columns(table)
    out: dict[str, list[list[Any]]] = {}
    for layer, head, relation, kind, source, target, correct, rank, top in zip(*cols):
        out.setdefault(str(layer * results.n_heads + head), []).append(
            [
                rindex[relation],
                KINDS.index(kind),
                source,
                target,
                int(correct),
                rank,
                _as_strings(top, MAX_TOP_TOKENS),
            ]
        )
    return out


def _columns(table: pd.DataFrame) -> tuple[list[Any], ...]:
    """Evidence columns as plain Python lists (fast to zip; Arrow strings iterate slowly):
    layer, head, relation, kind, source, target, correct, target_rank, top_tokens."""
    return (
        table["layer"].astype(int).tolist(),
        table["head"].astype(int).tolist(),
        table["relation"].astype(str).tolist(),
        table["kind"].astype(str).tolist(),
        table["source"].astype(str).tolist(),
        table["target"].astype(str).tolist(),
        table["correct"].astype(bool).tolist(),
        table["target_rank"].astype(int).tolist(),
        table["top_tokens"].tolist(),
    )


def _per_cell(
    scores: pd.DataFrame, relations: Sequence[str], column: str, n_heads: int, n_cells: int
) -> np.ndarray:
    """[relations, cells] float array of one scores column (NaN where missing)."""
    out = np.full((len(relations), n_cells), np.nan)
    r = scores["relation"].astype(str).map({name: k for k, name in enumerate(relations)})
    keep = r.notna().to_numpy()
    rows = scores[keep]
    cell = (rows["layer"].astype(int) * n_heads + rows["head"].astype(int)).to_numpy()
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    out[r[keep].to_numpy(dtype=int), cell] = values
    return out


def _ints(values: np.ndarray, scale: float) -> list[list[int]]:
    scaled = np.where(np.isfinite(values), np.round(values * scale), -1).astype(int)
    return scaled.tolist()  # type: ignore[no-any-return]


def null_data(
    results: MapResults, scores: pd.DataFrame, relations: Sequence[str]
) -> dict[str, Any] | None:
    """Null mean/max (thousandths), p (ten-thousandths), z (hundredths, null when missing) per
    relation and cell, or None when the map has no null columns."""
    if not all(c in scores.columns for c in NULL_COLUMNS):
        return None
    n_cells = results.n_layers * results.n_heads
    cell = {c: _per_cell(scores, relations, c, results.n_heads, n_cells) for c in NULL_COLUMNS}
    z = np.where(np.isfinite(cell["z"]), np.round(cell["z"] * 100), np.nan)
    return {
        "mean": _ints(cell["null_mean"], 1000),
        "max": _ints(cell["null_max"], 1000),
        "p": _ints(cell["p_value"], 10000),
        "z": [[None if math.isnan(v) else int(v) for v in row] for row in z],
    }


def class_level_relations(results: MapResults) -> list[str]:
    """The relations the manifest flags as class-level (high null); empty before the null."""
    flagged = results.manifest.get("relations_class_level")
    return [str(r) for r in flagged] if isinstance(flagged, list) else []


def dynamic_data(results: MapResults, relations: Sequence[str]) -> dict[str, Any] | None:
    """Dynamic scores per validated relation (mean over templates; thousandths per cell,
    −1 none), without and with context; None when ``validate`` did not write them."""
    path = results.directory / DYNAMIC_HEADS
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    needed = ("relation", "layer", "head", "dynamic_without_context", "dynamic_with_context")
    if not all(c in table.columns for c in needed):
        return None
    table = table[
        table["layer"].between(0, results.n_layers - 1)
        & table["head"].between(0, results.n_heads - 1)
    ]
    means = (
        table.groupby(["relation", "layer", "head"], as_index=False)[list(needed[3:])]
        .mean(numeric_only=True)
        .astype({"relation": str})
    )
    present = [r for r in relations if r in set(means["relation"])]
    if not present:
        return None
    n_cells = results.n_layers * results.n_heads
    return {
        "relations": [relations.index(r) for r in present],
        "without": _ints(_per_cell(means, present, needed[3], results.n_heads, n_cells), 1000),
        "with": _ints(_per_cell(means, present, needed[4], results.n_heads, n_cells), 1000),
    }


def similar_heads(score: np.ndarray, supp: np.ndarray, k: int = MAX_SIMILAR) -> list[list[int]]:
    """Per head, its ``k`` most alike heads as flat [index, cosine in thousandths, ...].

    A head's vector is its relation scores followed by its suppression scores ([relations,
    cells] each, NaN as 0); cosine similarity. Heads whose vector is zero have none.
    """
    vectors = np.nan_to_num(np.concatenate([score, supp], axis=0).T.astype(np.float32))
    norms = np.linalg.norm(vectors, axis=1)
    ok = norms > 0
    unit = np.zeros_like(vectors)
    unit[ok] = vectors[ok] / norms[ok, None]
    n = len(vectors)
    k = min(k, max(int(ok.sum()) - 1, 0))
    out: list[list[int]] = [[] for _ in range(n)]
    if k == 0:
        return out
    chunk = 512
    for start in range(0, n, chunk):
        sims = unit[start : start + chunk] @ unit.T  # [chunk, n]
        sims[:, ~ok] = -np.inf
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not itself
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for row, cand in zip(rows, top):
            i = start + int(row)
            if not ok[i]:
                continue
            order = cand[np.argsort(-sims[row, cand], kind="stable")]
            out[i] = [v for j in order for v in (int(j), round(float(sims[row, j]) * 1000))]
    return out


def head_words(
    results: MapResults,
    scores: pd.DataFrame,
    relations: Sequence[str],
    evidence: pd.DataFrame | None,
    class_level: Sequence[str],
    threshold: float,
) -> list[str]:
    """One line in words per head index (see ``head_words.head_line``)."""
    n_cells = results.n_layers * results.n_heads
    flagged = set(class_level)
    readings: list[list[RelationReading]] = [[] for _ in range(n_cells)]
    sub = scores[scores["relation"].astype(str).isin(set(relations))]
    index = (sub["layer"].astype(int) * results.n_heads + sub["head"].astype(int)).tolist()
    ks = pd.to_numeric(sub["k"], errors="coerce").tolist() if "k" in sub else [None] * len(sub)
    for i, relation, score, supp, k in zip(
        index,
        sub["relation"].astype(str).tolist(),
        sub["score"].astype(float).tolist(),
        sub["suppression_score"].astype(float).tolist(),
        ks,
    ):
        readings[i].append(
            RelationReading(
                relation,
                score,
                supp,
                class_level=relation in flagged,
                k=None if k is None or math.isnan(k) else int(k),
            )
        )
    pairs: list[list[EvidencePair]] = [[] for _ in range(n_cells)]
    if evidence is not None and not evidence.empty:
        wanted = evidence["relation"].astype(str).isin(set(relations))
        kept = _kept_evidence(evidence[wanted], results)
        cols = _columns(kept)
        for layer, head, relation, kind, source, target, correct, rank, _ in zip(*cols):
            pairs[layer * results.n_heads + head].append(
                EvidencePair(relation, source, target, correct, rank, kind)
            )
    return [head_line(readings[i], pairs[i], threshold) for i in range(n_cells)]


DUP_WORDS = 0.5
"""A validated duplicate-token score from which the head's line says it attends to copies."""


def with_qk_words(words: list[str], qk: dict[str, Any] | None) -> list[str]:
    """Each head's line, followed by what it reads when the duplicate-token reading is
    validated on this model and the head's score is at least :data:`DUP_WORDS`."""
    if qk is None or qk["checks"]["dup"]["ok"] is not True:
        return words
    return [
        f"{line} Attends to earlier copies of the current token (duplicate-token {d / 1000:.2f})."
        if d >= DUP_WORDS * 1000
        else line
        for line, d in zip(words, qk["dup"])
    ]


def head_page_data(
    results: MapResults,
    scores: pd.DataFrame,
    relations: Sequence[str],
    score_cells: np.ndarray,
    supp_cells: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """The page's per-head extras of one model: ``words``, ``similar``, ``evidence``, ``null``,
    ``class_level`` (relation names), ``dynamic``, ``qk`` (what the head reads,
    :mod:`headatlas.report.head_qk`) and ``alike_ov`` (most alike by OV subspace,
    :mod:`headatlas.report.ov_affinity`); the last five null / empty when absent.

    ``score_cells`` / ``supp_cells`` are [relations, cells] in [0, 1], NaN where missing.
    """
    evidence = evidence_table(results)
    class_level = class_level_relations(results)
    qk = qk_data(results)
    words = head_words(results, scores, relations, evidence, class_level, threshold)
    return {
        "words": with_qk_words(words, qk),
        "similar": similar_heads(score_cells, supp_cells),
        "evidence": evidence_by_head(evidence, results, relations),
        "null": null_data(results, scores, relations),
        "class_level": class_level,
        "dynamic": dynamic_data(results, relations),
        "qk": qk,
        "alike_ov": alike_by_head(results),
    }
