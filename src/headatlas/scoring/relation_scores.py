"""Relation and suppression scores of every head of one layer, factored and batched over all
relations' pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from headatlas.circuits import LayerOV
from headatlas.scoring.kernel.candidates import candidate_columns_shared, candidate_directions
from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.kernel.pairs import STAGES, pair_ranks
from headatlas.scoring.plan import ScoringPlan
from headatlas.scoring.readout import Readout


def layer_ranks(
    layer: LayerOV, X: torch.Tensor, readout: Readout, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation and suppression ranks [n_heads, n_pairs] for every head of a layer (the pruned
    kernel, :func:`~headatlas.scoring.kernel.pairs.pair_ranks`, with B kept factored; ranks
    capped at the layout's k when it has one), on the readout's device and in its dtype.

    ``X`` [n_sources, d] are the layer's source embeddings; ``readout`` (a bound recipe) gives
    the folded unembedding W_Uf [d, V], the output map and the logit bias b_U (added after
    the final norm).

    logits = s · (z W_O + b_O) W_Uf + b_U, kept factored as Z [n, r] @ B [r, V]. The final
    norm's per-row factor s = 1/σ(y) is positive and cancels out of top-k, so it is computed
    (through a d_head x d_head Gram matrix) only when a bias follows it.
    """
    heads = head_readouts(layer, X, readout)
    orders = candidate_orders(heads) if layout.k is not None else [None] * len(heads)
    ranks = [pair_ranks(Z, B, layout, order=o) for (Z, B), o in zip(heads, orders, strict=True)]
    return torch.stack([u for u, _ in ranks]), torch.stack([d for _, d in ranks])


def head_readouts(
    layer: LayerOV, X: torch.Tensor, readout: Readout
) -> list[tuple[torch.Tensor, Factored]]:
    """Every head's logits kept factored, ``Z`` [n_sources, r] and ``B`` = W @ U [r, V]
    (logits = Z @ B, up to the final norm's positive per-row factor when no bias follows
    it), on the readout's device and in its dtype: :meth:`LayerReadout.heads`."""
    return readout.layer(layer).heads(X)


def candidate_orders(heads: Sequence[tuple[torch.Tensor, Factored]]) -> list[torch.Tensor | None]:
    """Each head's candidate columns for the pruned kernel's first passes, best first
    (Σ STAGES of them, every head's from one pass over U); None on the meta device."""
    if not heads or heads[0][0].device.type == "meta":
        return [None] * len(heads)
    dirs = [candidate_directions(Z, B) for Z, B in heads]
    return list(candidate_columns_shared(dirs, heads[0][1].shared, sum(STAGES)))


def layer_scores(
    plan: ScoringPlan, up: torch.Tensor, down: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [n_heads, n_relations] from ranks: share of pairs ranked within top-k."""
    k = plan.pair_k.to(up.device)
    return plan.relation_means((up < k).cpu()), plan.relation_means((down < k).cpu())
