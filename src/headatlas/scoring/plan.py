"""What one map computes: the relations' pairs flattened over unique source tokens (the
read-out itself is the recipe's, :mod:`headatlas.scoring.recipe`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headatlas.circuits import ModelCircuits
from headatlas.scoring.options import MapOptions
from headatlas.scoring.recipe import SourceInputs


@dataclass
class RelationPairs:
    """One usable relation, tokenised."""

    name: str
    category: str
    k: int
    source_ids: list[int]
    target_ids: list[int]


@dataclass
class ScoringPlan:
    """All relations' pairs over a shared list of unique source tokens."""

    relations: list[RelationPairs]
    source_ids: torch.Tensor  # [n_sources] unique token ids
    pair_rows: torch.Tensor  # [n_pairs] row into source_ids
    pair_targets: torch.Tensor  # [n_pairs] target token ids
    pair_relation: torch.Tensor  # [n_pairs] index into relations
    pair_k: torch.Tensor  # [n_pairs]

    @classmethod
    def build(cls, relations: list[RelationPairs]) -> ScoringPlan:
        """Flatten relations into pairs over unique sources."""
        all_src = sorted({s for r in relations for s in r.source_ids})
        row_of = {s: i for i, s in enumerate(all_src)}
        rows, tgts, rel, ks = [], [], [], []
        for i, r in enumerate(relations):
            rows += [row_of[s] for s in r.source_ids]
            tgts += r.target_ids
            rel += [i] * len(r.source_ids)
            ks += [r.k] * len(r.source_ids)
        as_long = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
        return cls(
            relations, as_long(all_src), as_long(rows), as_long(tgts), as_long(rel), as_long(ks)
        )

    def relation_means(self, hits: torch.Tensor) -> torch.Tensor:
        """Per-relation share of hits: hits [..., n_pairs] bool -> [..., n_relations]."""
        n = len(self.relations)
        sums = torch.zeros(*hits.shape[:-1], n, dtype=torch.float64)
        sums.index_add_(-1, self.pair_relation, hits.double())
        counts = torch.bincount(self.pair_relation, minlength=n).double()
        return sums / counts


def source_embeddings(
    circuits: ModelCircuits, ids: torch.Tensor, options: MapOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer-0 input, layer-1 input) for the given tokens, [n, d] each (the recipe's
    :class:`~headatlas.scoring.recipe.SourceInputs` gives every layer's)."""
    inputs = SourceInputs(options.recipe, circuits, ids, None)
    return inputs.layer(0), inputs.layer(min(1, circuits.cfg.n_layers - 1))
