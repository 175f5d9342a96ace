"""The columns most likely to be extreme in a head's logit rows, best first: the pruned
kernels' first passes read these."""

from __future__ import annotations

import torch

from headatlas.scoring.kernel.factored import Factored, SharedU


def candidate_directions(Z: torch.Tensor, B: Factored, rank: int = 8) -> torch.Tensor:
    """The top ``rank`` singular directions of C^½ W scaled by their singular values, [rank, d],
    C = ZᵀZ / n; stacking several heads' lets one product with the shared U score every head's
    columns at once (:func:`candidate_columns_shared`)."""
    C = (Z.T @ Z) / max(1, Z.shape[0])
    lam, Q = torch.linalg.eigh(C)
    half = Q * lam.clamp_min(0).sqrt()  # C = half @ half.T
    _, sv, Vh = torch.linalg.svd(half.T @ B.W, full_matrices=False)
    return sv[:rank, None] * Vh[:rank]


def candidate_columns(Z: torch.Tensor, B: Factored, n: int, rank: int = 8) -> torch.Tensor:
    """The ``n`` columns of ``B`` most likely to be extreme in a row of Z @ B, best first.

    A row's ranks do not change when a constant is added to it, so what matters is each
    column's deviation from the mean column, (b_j - b̄); over the rows z of Z its expected
    square is (b_j - b̄)ᵀ C (b_j - b̄) with C = ZᵀZ / n: columns with a large one are far from
    the middle of most rows, on one side or the other. It is estimated through the top
    ``rank`` singular directions of C^½ W, at rank·d·V cost.
    """
    return candidate_columns_shared([candidate_directions(Z, B, rank)], B.shared, n)[0]


def candidate_columns_shared(
    directions: list[torch.Tensor], shared: SharedU, n: int
) -> list[torch.Tensor]:
    """:func:`candidate_columns` of several heads sharing U, from their
    :func:`candidate_directions`, in one pass over U."""
    P = torch.cat(directions, 0)
    proj = P @ shared.U - P @ shared.mean
    out, i = [], 0
    for d in directions:
        part = proj[i : i + d.shape[0]]
        i += d.shape[0]
        out.append((part * part).sum(0).topk(min(n, proj.shape[1]), sorted=True).indices)
    return out


def spread_order(block: Factored | torch.Tensor, n: int, rank: int = 8) -> torch.Tensor:
    """Per head, the ``n`` columns of B_h farthest from its mean column (‖b_j - b̄‖², the
    input-free version of :func:`candidate_columns`; through W's top ``rank`` singular
    directions when factored), best first: [h, n]. ``block`` has a leading head dimension."""
    if isinstance(block, Factored):
        h, _, V = block.shape
        _, sv, Vh = torch.linalg.svd(block.W, full_matrices=False)  # [h, r], [h, r, d]
        P = (sv[:, :rank, None] * Vh[:, :rank]).reshape(-1, block.W.shape[2])  # [h*rank, d]
        proj = (P @ block.shared.U - P @ block.shared.mean).reshape(h, -1, V)
        spread = proj.square().sum(1)
    else:  # a formed block [h, r, V] (the unpruned reference read-out)
        V = block.shape[2]
        spread = (block - block.mean(2, keepdim=True)).square().sum(1)
    return spread.topk(min(n, V), dim=1, sorted=True).indices
