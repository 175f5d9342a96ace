"""A null for every relation: its scores with the targets shuffled.

Each relation's targets are permuted among its own pairs (a few seeded permutations), and the
permuted pairs are scored by the same kernel, with the same recipe and the same k, in the same
pass over each head as the real pairs (their full rows shared:
:class:`~headatlas.scoring.layers.LayerScores`). A head that promotes the relation's *targets as a class* (every pronoun,
every capital), whatever the source, scores as high on shuffled pairs as on real ones; a head
that maps each source to its own target does not.

Per (head, relation) the scores table gains ``null_mean`` and ``null_max`` (over the
permutations), an empirical ``p_value`` = (1 + #{null ≥ score}) / (1 + n_perm) and
``z`` = (score − null_mean) / max(null_std, 1/n_pairs) (the floor is one pair, the scores'
resolution, so a null that never moved gives a finite z).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd
import torch

from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.kernel.pairs import STAGES, HeadRows, RowJob, full_rows, pair_margin
from headatlas.scoring.plan import RelationPairs, ScoringPlan

NULL_COLUMNS: tuple[str, ...] = ("null_mean", "null_max", "p_value", "z")
"""Columns the null adds to scores.parquet."""


def permuted_targets(targets: Sequence[int], seed: int, relation: str, index: int) -> list[int]:
    """``targets`` in the order of permutation ``index`` of ``relation`` under ``seed``
    (deterministic across runs and platforms: Python's string-seeded Mersenne Twister)."""
    order = list(range(len(targets)))
    random.Random(f"headatlas-null:{seed}:{relation}:{index}").shuffle(order)
    return [targets[i] for i in order]


def null_plan(relations: Sequence[RelationPairs], n_perm: int, seed: int) -> ScoringPlan:
    """The permuted pairs of every relation as one plan: relation ``r``'s permutation ``p``
    is plan relation ``r * n_perm + p``, with the same sources, category and k."""
    rels = [
        RelationPairs(
            rel.name,
            rel.category,
            rel.k,
            list(rel.source_ids),
            permuted_targets(rel.target_ids, seed, rel.name, p),
        )
        for rel in relations
        for p in range(n_perm)
    ]
    return ScoringPlan.build(rels)


def null_hits(
    Z: torch.Tensor,
    B: Factored,
    layout: PairLayout,
    order: torch.Tensor | None,
    stages: tuple[int, ...] = STAGES,
) -> torch.Tensor:
    """Per pair (original order), whether the target's relation rank is below k (bool): what
    :func:`~headatlas.scoring.kernel.pairs.pair_ranks` decides for the relation score, without
    the suppression side the null does not need (:func:`null_first_pass`, then full rows)."""
    up, alive = null_first_pass(Z, B, layout, order, stages)
    full_rows(HeadRows(Z, B), [RowJob(layout, alive, up, None, "null")])
    return hits_of(layout, up)


def null_first_pass(
    Z: torch.Tensor,
    B: Factored,
    layout: PairLayout,
    order: torch.Tensor | None,
    stages: tuple[int, ...] = STAGES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The null's first pass: (up, alive), up [n_pairs] in layout order (k for the pairs
    decided), alive the layout positions whose relation rank needs their full row.

    A pair is a miss when the k-th largest of its row's candidate logits (``order``'s first
    columns, :func:`~headatlas.scoring.relation_scores.candidate_orders`) exceeds the target's
    logit by more than the rounding margin (:mod:`~headatlas.scoring.kernel.bounds`): k tokens
    are then above the target in every computation. That is one top-k per source row instead
    of one comparison per pair and column; the pairs left (targets near the top) get exact
    ranks from full rows.
    """
    kk = layout.k
    if kk is None:
        raise ValueError("the null needs a layout with k")
    n = layout.n_pairs
    up = torch.zeros(n, dtype=torch.int64, device=Z.device)
    alive = torch.arange(n, device=Z.device)
    if order is not None and Z.device.type != "meta":
        src, tgt = layout.src, layout.tgt
        uniq, inv = torch.unique(tgt, return_inverse=True)  # permuted targets: few distinct
        t = (Z[src] * B.columns(uniq)[:, inv].T).sum(1)
        margin = pair_margin(Z, B)[src]
        k_max = int(kk.max())
        end = 0
        for size in stages:
            end = min(end + size, int(order.numel()))
            if alive.numel() == 0 or end == 0:
                break
            rows, loc = torch.unique(src[alive], return_inverse=True)
            S = Z[rows] @ B.columns(order[:end])  # [m, c]
            kth = S.topk(min(k_max, end), dim=1).values  # [m, ≤k_max], descending
            ka = kk[alive]
            v = kth[loc, (ka - 1).clamp(max=kth.shape[1] - 1)]
            miss = (ka <= kth.shape[1]) & (v > t[alive] + margin[alive])
            up[alive[miss]] = ka[miss]
            alive = alive[~miss]
    return up, alive


def hits_of(layout: PairLayout, up: torch.Tensor) -> torch.Tensor:
    """Per pair (original order): relation rank (layout order ``up``) below its k."""
    assert layout.k is not None
    hits = torch.empty(layout.n_pairs, dtype=torch.bool, device=up.device)
    hits[layout.t_index] = up < layout.k
    return hits


def null_scores(plan: ScoringPlan, hits: torch.Tensor, H: int, R: int, n_perm: int) -> torch.Tensor:
    """Relation scores [H, R, n_perm] of the null's pairs from their hits [H, pairs]."""
    return plan.relation_means(hits.cpu()).reshape(H, R, n_perm)


def null_statistics(
    score: torch.Tensor, null: torch.Tensor, n_pairs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The null's columns from real scores [H, R], null scores [H, R, n_perm] and the
    relations' pair counts [R]: null_mean, null_max, p_value, z, each [H, R] float64."""
    score, null = score.double(), null.double()
    n_perm = null.shape[-1]
    mean = null.mean(-1)
    std = null.std(-1, correction=0)
    floor = 1.0 / n_pairs.double().clamp_min(1)
    p = (1 + (null >= score[..., None]).sum(-1)).double() / (1 + n_perm)
    z = (score - mean) / torch.maximum(std, floor.expand_as(std))
    return {"null_mean": mean, "null_max": null.amax(-1), "p_value": p, "z": z}


def class_level_relations(scores: pd.DataFrame, threshold: float) -> list[str]:
    """Relations whose null reaches the label threshold on some head (max over heads of
    ``null_max`` ≥ ``threshold``): shuffled pairs score like real ones, so a high score says
    the head promotes the targets as a class, not a mapping from each source. Sorted names;
    empty when the table has no null."""
    if "null_max" not in scores.columns:
        return []
    peak = scores.groupby("relation")["null_max"].max()
    return sorted(str(r) for r, v in peak.items() if v >= threshold)
