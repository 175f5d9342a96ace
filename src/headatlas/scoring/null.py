"""A null for every relation: its scores with the targets shuffled.

Each relation's targets are permuted among its own pairs (a few seeded permutations), and the
permuted pairs are scored by the same kernel, with the same recipe and the same k, in the same
pass over each layer as the real pairs (:func:`~headatlas.scoring.relation_scores.
layer_ranks_multi`). A head that promotes the relation's *targets as a class* (every pronoun,
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


def null_scores(plan: ScoringPlan, up: torch.Tensor, H: int, R: int, n_perm: int) -> torch.Tensor:
    """Relation scores [H, R, n_perm] of the null's pairs from their ranks ``up`` [H, pairs]
    (a pair counts when its rank is below k, as for the real pairs)."""
    hits = (up < plan.pair_k.to(up.device)).cpu()
    return plan.relation_means(hits).reshape(H, R, n_perm)


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
